"""Parity and throughput of M2-CLIP's depthwise token convolution alone (``msta_fast.ops.token_dwconv``),
forward and forward + backward.

Providers: the eager reference (``token_dwconv_ref``: a permute to (B, C, T, H, W), ``conv3d``, a
permute back), ``torch.compile`` of it, the Triton kernel (token layout, no permutes) and the C++/CUDA
extension. On the CPU: reference vs extension, fp32. On a GPU: the TED-Adapter's shapes on ViCLIP-B/16
(batch 32, 8 frames, 14 x 14 patches, the adapter's 384 channels; the (3,1,1) TConv and the (1,3,3)
SConv) in bf16, timed with ``triton.testing.do_bench``; the op is memory-bound, so the floor is
bytes / HBM bandwidth (forward: read u, write y; forward + backward: + read dy, write du, read u).
Speed-ups are ratios to the eager reference measured in the same run.
"""

from __future__ import annotations

import pytest
import torch

from msta_fast.ops import extension
from msta_fast.ops.parity import relative_error
from msta_fast.ops.reference import token_dwconv_ref

HBM_BYTES_PER_S = {"H200": 4.3e12, "H100": 3.0e12}
# name: (batch, (T, H, W), channels, kernel)
CPU_CASES = {
    "B2-T8-7x7-C384-k311": (2, (8, 7, 7), 384, (3, 1, 1)),
    "B2-T8-7x7-C384-k133": (2, (8, 7, 7), 384, (1, 3, 3)),
}
GPU_CASES = {
    "B32-T8-14x14-C384-k311": (32, (8, 14, 14), 384, (3, 1, 1)),
    "B32-T8-14x14-C384-k133": (32, (8, 14, 14), 384, (1, 3, 3)),
}
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")


def provider_op(name: str):
    if name == "eager":
        return token_dwconv_ref
    if name == "compile":
        return torch.compile(token_dwconv_ref)
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
@pytest.mark.parametrize("provider", ["eager", "ext"])
@pytest.mark.parametrize("case_name", list(CPU_CASES))
def test_cpu_token_dwconv(benchmark, record_result, case_name, provider, phase):
    """CPU, fp32: reference vs extension (parity checked first)."""
    u, w, b, grid = make_case(case_name, CPU_CASES, torch.float32, "cpu")
    op = provider_op(provider)
    with torch.no_grad():
        err = relative_error(op(u, w, b, grid, "viclip"), token_dwconv_ref(u, w, b, grid, "viclip"))
    assert err < 1e-5, f"{provider} differs from the reference: relative error {err:.3g}"
    benchmark.pedantic(step_fn(op, u, w, b, grid, phase), rounds=10, warmup_rounds=2)
    seconds = benchmark.stats.stats.median
    record_result("token_dwconv_cpu", case=case_name, provider=provider, phase=phase, dtype="fp32",
                  median_ms=seconds * 1e3, gb_s=min_bytes(u, phase) / seconds / 1e9, rel_err=err)


@needs_gpu
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case_name", list(GPU_CASES))
def test_gpu_token_dwconv(benchmark, record_result, case_name, phase):
    """GPU, bf16: every provider in one run; speed-ups relative to eager, fraction of the bandwidth floor."""
    import triton.testing

    u, w, b, grid = make_case(case_name, GPU_CASES, torch.bfloat16, "cuda")
    with torch.no_grad():
        gold = token_dwconv_ref(u.float(), w.float(), b.float(), grid, "viclip")
    name = torch.cuda.get_device_name()
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in name), HBM_BYTES_PER_S["H100"])
    floor_ms = min_bytes(u, phase) / bandwidth * 1e3
    times = {}
    for provider in ("eager", "compile", "triton", "ext"):
        op = provider_op(provider)
        with torch.no_grad():
            err = relative_error(op(u, w, b, grid, "viclip"), gold)
        fn = step_fn(op, u, w, b, grid, phase)
        fn()  # compile / autotune outside the timing
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        times[provider] = ms
        record_result("token_dwconv_gpu", case=case_name, provider=provider, phase=phase, dtype="bf16",
                      median_ms=ms, speedup_vs_eager=times["eager"] / ms, gb_s=min_bytes(u, phase) / ms / 1e6,
                      roofline_fraction=floor_ms / ms, rel_err=err)
    triton_step = step_fn(provider_op("triton"), u, w, b, grid, phase)

    def synced():
        triton_step()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=10, warmup_rounds=2)
    benchmark.extra_info.update({f"{k}_ms": v for k, v in times.items()})
