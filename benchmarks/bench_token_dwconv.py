"""Parity and throughput of M2-CLIP's depthwise token convolution alone (``msta_fast.ops.token_dwconv``),
forward and forward + backward.

Providers: the eager reference (``token_dwconv_ref``: a permute to (B, C, T, H, W), ``conv3d``, a permute back),
``torch.compile`` of it, the Triton kernel (token layout, no permutes) and the C++/CUDA extension.
``pytest benchmarks/bench_token_dwconv.py --benchmark-only`` measures the CPU (fp32): eager, ``torch.compile``, the
extension and ``auto`` (what the default backend picks) in one run, round-robin, with speed-ups relative to eager.
On a GPU the device check (``benchmarks/device_check.sh``, steps ``token_conv`` and ``extension``) measures the
TED-Adapter's shapes on
ViCLIP-B/16 (:data:`GPU_CASES`: batch 32, 8 frames, 14 x 14 patches, the adapter's 384 channels; the (3,1,1) TConv
and the (1,3,3) SConv) in bf16 with these helpers; the op is memory-bound, so its floor is bytes / bandwidth
(forward: read u, write y; forward + backward: + read dy, write du, read u).
"""

from __future__ import annotations

import pytest
import torch
from timing import interleaved

from msta_fast.ops import extension
from msta_fast.ops.parity import relative_error
from msta_fast.ops.reference import token_dwconv_ref

# name: (batch, (T, H, W), channels, kernel)
CPU_CASES = {
    "B2-T8-7x7-C384-k311": (2, (8, 7, 7), 384, (3, 1, 1)),
    "B2-T8-7x7-C384-k133": (2, (8, 7, 7), 384, (1, 3, 3)),
}
GPU_CASES = {
    "B32-T8-14x14-C384-k311": (32, (8, 14, 14), 384, (3, 1, 1)),
    "B32-T8-14x14-C384-k133": (32, (8, 14, 14), 384, (1, 3, 3)),
}


def provider_op(name: str, compile_backend: str = "inductor"):
    """The op of a provider: ``eager``, ``compile`` (``torch.compile`` of the reference), ``triton``, ``ext``, or
    ``auto`` (``msta_fast.ops.token_dwconv``: what the default backend picks, once the extension is loaded)."""
    if name == "eager":
        return token_dwconv_ref
    if name == "auto":
        from msta_fast.ops import token_dwconv

        return token_dwconv
    if name == "compile":
        return torch.compile(token_dwconv_ref, backend=compile_backend)
    if name == "triton":
        from msta_fast.kernels.token_dwconv import token_dwconv_triton

        return token_dwconv_triton
    if name == "ext":
        from msta_fast.ops.extension_ops import token_dwconv_ext

        extension.load()
        return token_dwconv_ext
    raise ValueError(name)


def make_case(name: str, cases: dict, dtype: torch.dtype, device: str):
    batch, grid, channels, kernel = cases[name]
    T, H, W = grid
    u = torch.randn(batch, H * W * T, channels, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(channels, 1, *kernel, device=device) / 3).to(dtype).requires_grad_()
    b = torch.randn(channels, device=device, dtype=dtype, requires_grad=True)
    return u, w, b, grid


def step_fn(op, u, w, b, grid, phase: str):
    grad = torch.randn_like(u)

    def fwd():
        return op(u, w, b, grid, "viclip")

    def fwd_bwd():
        return torch.autograd.grad(op(u, w, b, grid, "viclip"), (u, w, b), grad)

    return fwd if phase == "fwd" else fwd_bwd


def min_bytes(u: torch.Tensor, phase: str) -> float:
    return (2 if phase == "fwd" else 5) * u.numel() * u.element_size()


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case_name", list(CPU_CASES))
def test_cpu_token_dwconv(benchmark, record_result, case_name, phase):
    """CPU, fp32: eager, torch.compile, the extension and what ``auto`` picks, in one run, round-robin (parity
    checked first)."""
    u, w, b, grid = make_case(case_name, CPU_CASES, torch.float32, "cpu")
    with torch.no_grad():
        want = token_dwconv_ref(u, w, b, grid, "viclip")
    fns, errors = {}, {}
    for provider in ("eager", "compile", "ext", "auto"):  # auto after ext: it may use the loaded extension
        op = provider_op(provider)
        with torch.no_grad():
            errors[provider] = relative_error(op(u, w, b, grid, "viclip"), want)
        assert errors[provider] < 1e-5, f"{provider} differs from the reference: relative error {errors[provider]:.3g}"
        fns[provider] = step_fn(op, u, w, b, grid, phase)
    seconds = interleaved(fns, rounds=15, warmup=3)
    for provider, s in seconds.items():
        record_result("token_dwconv_cpu", case=case_name, provider=provider, phase=phase, dtype="fp32",
                      median_ms=s * 1e3, speedup_vs_eager=seconds["eager"] / s,
                      gb_s=min_bytes(u, phase) / s / 1e9, rel_err=errors[provider])
    benchmark.extra_info.update({f"{p}_ms": s * 1e3 for p, s in seconds.items()})
    benchmark.pedantic(fns["ext"], rounds=5, warmup_rounds=1)
