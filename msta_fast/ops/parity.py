"""Random inputs and comparisons for checking a fast MSTA adapter op against the reference.

Used by the parity tests and the benchmarks. A case describes one adapter application: the token
layout and grid (video tower) or none (text tower), width C, adapter dim r, options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Relative error bounds (max |fast - ref| / max |ref|) per dtype against a reference of the same dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}


@dataclass(frozen=True)
class AdapterCase:
    """One adapter application. ``grid`` None means the text tower (no temporal path)."""

    batch: int
    width: int
    dim: int
    grid: tuple[int, int, int] | None = None
    kernel: tuple[int, int, int] = (3, 1, 1)
    layout: str = "viclip"
    has_cls: bool = True
    text_tokens: int = 7
    dropout_p: float = 0.0
    grad_scale: bool = True
    bias: bool = True
    scale: float = 0.5

    @property
    def tokens(self) -> int:
        """Tokens per batch row (L)."""
        if self.grid is None:
            return self.text_tokens
        T, H, W = self.grid
        return int(self.has_cls) + (H * W * T if self.layout == "viclip" else H * W)

    @property
    def rows(self) -> int:
        """Batch rows: clips for "viclip", clips x frames for "frames"."""
        return self.batch * self.grid[0] if self.grid is not None and self.layout == "frames" else self.batch

    def options(self) -> dict:
        return dict(scale=self.scale, grad_scale=self.grad_scale, grid=self.grid, layout=self.layout,
                    has_cls=self.has_cls, dropout_p=self.dropout_p, training=self.dropout_p > 0)


def make_inputs(case: AdapterCase, dtype: torch.dtype, device: str | torch.device = "cpu", requires_grad: bool = True):
    """(x (rows, L, C), [down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b], residual).

    Weights are scaled so activations stay O(1); biases are non-zero so their gradients are tested.
    """
    C, r = case.width, case.dim

    def rand(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, device=device) * std).to(dtype).requires_grad_(requires_grad)

    x = rand(case.rows, case.tokens, C, std=1.0)
    weights = [
        rand(r, C, std=C**-0.5), rand(r, std=0.1) if case.bias else None,
        rand(r, r, std=r**-0.5), rand(r, std=0.1) if case.bias else None,
        rand(C, r, std=r**-0.5), rand(C, std=0.1) if case.bias else None,
    ]
    if case.grid is not None:
        weights += [rand(C, 1, *case.kernel, std=0.3), rand(C, std=0.1) if case.bias else None]
    else:
        weights += [None, None]
    residual = rand(case.rows, case.tokens, C, std=1.0)
    return x, weights, residual


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def first_mismatch(a: torch.Tensor, b: torch.Tensor, tol: float) -> str:
    """Where ``a`` and ``b`` first differ by more than ``tol * max|b|``: index and both values."""
    a, b = a.detach().double(), b.detach().double()
    bad = ((a - b).abs() > tol * b.abs().max().clamp_min(1e-30)).nonzero()
    if len(bad) == 0:
        return "no element over tolerance"
    idx = tuple(bad[0].tolist())
    return f"first mismatch at index {idx}: got {a[idx].item():.6g}, expected {b[idx].item():.6g}"


def assert_close(name: str, got: torch.Tensor | None, want: torch.Tensor | None, tol: float) -> None:
    """Relative error under ``tol``, else an error that names the tensor and the first mismatching index."""
    assert (got is None) == (want is None), f"{name}: one side is None"
    if got is None:
        return
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = relative_error(got, want)
    assert err < tol, f"{name}: relative error {err:.3g} >= {tol:g}; {first_mismatch(got, want, tol)}"


GRAD_NAMES = ("x", "down_w", "down_b", "shared_w", "shared_b", "up_w", "up_b", "conv_w", "conv_b")


def forward_and_grads(op, x, weights, residual, grad_out=None, **options):
    """Run ``op`` and backpropagate ``grad_out`` (random if None): (out, {name: grad or None}, grad_out)."""
    out = op(x, *weights, residual=residual, **options)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    inputs = [(n, t) for n, t in zip(GRAD_NAMES, [x, *weights], strict=True) if t is not None]
    grads = torch.autograd.grad(out, [t for _, t in inputs], grad_out)
    named = dict.fromkeys(GRAD_NAMES)
    named.update({n: g for (n, _), g in zip(inputs, grads, strict=True)})
    return out, named, grad_out
