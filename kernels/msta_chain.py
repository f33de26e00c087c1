"""One MSTA adapter application with fused Triton kernels: ``residual + s * A(x)``.

Math and semantics: :func:`msta_fast.ops.reference.msta_adapter_ref` (imported here as
``msta_adapter_ref``). Two kernels per direction:

- :mod:`msta_fast.kernels.adapter_hidden`: x -> h = dropout(ReLU(S(ReLU(Down(x))))) with the
  intermediates Down(x) and S(.) on chip; only h (tokens x r, r/C of the residual stream) is
  written (forward); dx, z1, da1, da2 (backward, recomputing the forward intermediates);
- :mod:`msta_fast.kernels.up_tconv`: h -> residual + s * (u + TConv(u)) with u = Up(h)
  never written to memory (forward), and du with the convolution's gradients (backward).

Traffic over the (tokens x C) stream: forward reads x and the residual and writes the output once;
backward reads the output gradient, x and du, and writes du and dx.

The weight gradients (``du^T h``, ``da2^T z1``, ``da1^T x``) are reductions over every token and
run as cuBLAS GEMMs. Gradient scaling: with ``grad_scale`` the adapter's parameters see the output
gradient as if s were 1 and the gradient into x is scaled by s; without it the parameters see s
times the output gradient. Dropout draws its mask from a seed (see :func:`dropout_keep`).

The forward and backward are ``torch.library`` custom ops (``msta_fast::triton_adapter_fwd`` and
``..._bwd``) with fake implementations and a registered autograd formula, so ``torch.compile``
traces through them. A backward whose kernels fail asks :mod:`msta_fast.ops.fallback` whether it may
run the reference instead (under the ``auto`` backend).
"""

import torch

from msta_fast.kernels.adapter_hidden import dropout_keep, hidden_bwd, hidden_fwd
from msta_fast.kernels.runtime import check_device
from msta_fast.kernels.up_tconv import LAYOUT_CODES, up_tconv_bwd, up_tconv_fwd
from msta_fast.ops import fallback
from msta_fast.ops.reference import check_adapter_call, msta_adapter_ref, reference_grads

__all__ = ["dropout_keep", "msta_adapter_ref", "msta_adapter_triton", "new_seed"]

_LAYOUTS = {code: name for name, code in LAYOUT_CODES.items()}


@torch.library.custom_op("msta_fast::triton_adapter_fwd", mutates_args=())
def _adapter_fwd(
    x: torch.Tensor, down_w: torch.Tensor, down_b: torch.Tensor | None, shared_w: torch.Tensor,
    shared_b: torch.Tensor | None, up_w: torch.Tensor, up_b: torch.Tensor | None, conv_w: torch.Tensor | None,
    conv_b: torch.Tensor | None, residual: torch.Tensor | None, scale: float, grid: list[int], layout: int,
    has_cls: bool, tokens: int, dropout_p: float, seed: int, grad_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (M, C) flattened tokens, ``tokens`` = L per batch row. Returns (out (M, C), h (M, r)).

    ``grad_scale`` does not change the forward; it is recorded for the backward.
    """
    h = hidden_fwd(x, down_w, down_b, shared_w, shared_b, dropout_p, seed)
    out = up_tconv_fwd(h, up_w, up_b, conv_w, conv_b, residual, scale, tokens, tuple(grid), _LAYOUTS[layout],
                       has_cls)
    return out, h


@_adapter_fwd.register_fake
def _(x, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b, residual, scale, grid, layout, has_cls,
      tokens, dropout_p, seed, grad_scale):
    out_dtype = x.dtype if residual is None else residual.dtype
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape[0], down_w.shape[0])


@torch.library.custom_op("msta_fast::triton_adapter_bwd", mutates_args=())
def _adapter_bwd(
    grad: torch.Tensor, x: torch.Tensor, h: torch.Tensor, down_w: torch.Tensor, down_b: torch.Tensor | None,
    shared_w: torch.Tensor, shared_b: torch.Tensor | None, up_w: torch.Tensor, up_b: torch.Tensor | None,
    conv_w: torch.Tensor | None, conv_b: torch.Tensor | None, scale: float, grad_scale: bool, grid: list[int],
    layout: int, has_cls: bool, tokens: int, dropout_p: float, seed: int,
) -> list[torch.Tensor]:
    """Returns [dx, d down_w, d down_b, d shared_w, d shared_b, d up_w, d up_b, d conv_w, d conv_b]."""
    gscale, xscale = (1.0, scale) if grad_scale else (scale, 1.0)

    def empty() -> torch.Tensor:
        # Absent optional gradients: a custom op cannot return None, nor one tensor twice.
        return grad.new_empty(0)

    if conv_w is not None:
        du, dcw, dcb = up_tconv_bwd(grad, h, up_w, up_b, conv_w, conv_b, gscale, tokens, tuple(grid),
                                    _LAYOUTS[layout], has_cls)
    else:
        du, dcw, dcb = (grad * gscale).to(x.dtype), empty(), None
    dx, z1, da1, da2 = hidden_bwd(x, down_w, down_b, shared_w, shared_b, up_w, du, dropout_p, seed, xscale)

    def bias_grad(g: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return g.sum(0, dtype=torch.float32).to(bias.dtype) if bias is not None else empty()

    return [
        dx,
        da1.t() @ x, bias_grad(da1, down_b),
        da2.t() @ z1, bias_grad(da2, shared_b),
        du.t() @ h, bias_grad(du, up_b),
        dcw, dcb if dcb is not None else empty(),
    ]


@_adapter_bwd.register_fake
def _(grad, x, h, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b, scale, grad_scale, grid, layout,
      has_cls, tokens, dropout_p, seed):
    like = [x, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b]
    return [torch.empty_like(t) if t is not None else grad.new_empty(0) for t in like]


def _setup_context(ctx, inputs, output):
    (x, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b, residual, scale, grid, layout, has_cls,
     tokens, dropout_p, seed, grad_scale) = inputs
    ctx.save_for_backward(x, output[1], down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b)
    ctx.options = (scale, grid, layout, has_cls, tokens, dropout_p, seed)
    ctx.has_residual = residual is not None
    ctx.grad_scale = grad_scale


def _backward(ctx, grad_out, grad_h):
    x, h, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b = ctx.saved_tensors
    scale, grid, layout, has_cls, tokens, dropout_p, seed = ctx.options
    inputs = (x, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b)
    try:
        grads = _adapter_bwd(grad_out.contiguous(), x, h, *inputs[1:], scale, ctx.grad_scale, grid, layout, has_cls,
                             tokens, dropout_p, seed)
        grads = [g if t is not None else None for g, t in zip(grads, inputs, strict=True)]
    except Exception as err:  # noqa: BLE001 - fallback.fall_back decides; anything else is re-raised
        if not fallback.fall_back(err, "backward"):
            raise
        grads = _reference_backward(grad_out, inputs, scale, ctx.grad_scale, grid, layout, has_cls, tokens,
                                    dropout_p, seed)
    residual_grad = grad_out if ctx.has_residual else None
    return (*grads, residual_grad, None, None, None, None, None, None, None, None)


def _reference_backward(grad_out, inputs, scale, grad_scale, grid, layout, has_cls, tokens, dropout_p, seed):
    """The gradients of ``inputs`` by the reference, recomputed with the kernels' dropout mask (eager mode)."""
    x, down_w = inputs[0], inputs[1]
    keep = dropout_keep(seed, x.shape[0], down_w.shape[0], dropout_p, x.device) if dropout_p > 0 else None
    L, C = tokens, x.shape[1]

    def reference(x, *weights):
        return msta_adapter_ref(
            x.reshape(-1, L, C), *weights, scale=scale, grad_scale=grad_scale, grid=tuple(grid),
            layout=_LAYOUTS[layout], has_cls=has_cls, dropout_p=dropout_p, training=dropout_p > 0,
            dropout_mask=keep.reshape(-1, L, keep.shape[1]) if keep is not None else None,
        ).reshape(-1, C)

    return reference_grads(reference, list(inputs), grad_out)


_adapter_fwd.register_autograd(_backward, setup_context=_setup_context)


def new_seed() -> int:
    """A dropout seed from torch's global generator (so ``torch.manual_seed`` makes runs repeatable)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def msta_adapter_triton(
    x: torch.Tensor,
    down_w: torch.Tensor,
    down_b: torch.Tensor | None,
    shared_w: torch.Tensor,
    shared_b: torch.Tensor | None,
    up_w: torch.Tensor,
    up_b: torch.Tensor | None,
    conv_w: torch.Tensor | None = None,
    conv_b: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
    grad_scale: bool = True,
    residual: torch.Tensor | None = None,
    grid: tuple[int, int, int] | None = None,
    layout: str = "viclip",
    has_cls: bool = True,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """``residual + s * A(x)`` with the fused kernels. x: (B, L, C); residual: (B, L, C) or None -> (B, L, C).

    All tensors share x's dtype and device. ``seed`` fixes the dropout mask (drawn from torch's
    generator when None); :func:`dropout_keep` returns that mask for the reference's ``dropout_mask``.
    A backward whose kernels fail runs the reference under the ``auto`` backend and raises under any
    other (:mod:`msta_fast.ops.fallback`).
    """
    check_device(x)
    B, L, C = x.shape
    check_adapter_call(layout, conv_w, grid)
    grid = tuple(grid) if grid is not None else (1, 1, 1)
    p = float(dropout_p) if training else 0.0
    if p > 0 and seed is None:
        seed = new_seed()
    res2d = residual.reshape(B * L, C) if residual is not None else None
    out, _ = _adapter_fwd(
        x.reshape(B * L, C).contiguous(), down_w.contiguous(), down_b, shared_w.contiguous(), shared_b,
        up_w.contiguous(), up_b, conv_w.contiguous() if conv_w is not None else None, conv_b,
        res2d.contiguous() if res2d is not None else None, float(scale), list(grid), LAYOUT_CODES[layout],
        bool(has_cls), L, p, int(seed or 0), bool(grad_scale),
    )
    return out.reshape(B, L, C)
