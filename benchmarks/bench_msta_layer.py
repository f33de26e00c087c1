"""Parity and throughput of one MSTA adapted layer (video and text tower), forward and forward + backward.

Providers: the eager reference (``msta_adapter_ref``), ``torch.compile`` of it, the fused Triton
kernels and the C++/CUDA extension. On the CPU: small shapes, reference vs extension (pytest-benchmark
timings). On a GPU: ViCLIP-B/16 shapes in bf16 (batch 32 x 1569 tokens, width 768; text 400 x 32
tokens, width 512; adapter dim 256 and 128), timed with ``triton.testing.do_bench`` (median), with
achieved TFLOP/s and GB/s and the fraction of the roofline floor (platform.md):

    FLOPs (fwd)   = 2 * tokens * (C*r + r*r + r*C)        the three GEMMs; the depthwise conv is noise
    FLOPs (f+b)   = 3 * FLOPs (fwd)                        backward = input + weight gradients
    bytes (fwd)   = 2 * tokens * C * 2 B                   read x, write out (bf16)
    bytes (f+b)   = 5 * tokens * C * 2 B                   + read dout, read x, write dx
    floor         = max(FLOPs / 790 TFLOP/s, bytes / HBM bandwidth (H100 3.0 TB/s, H200 4.3 TB/s))

Speed-ups are ratios to the eager reference measured in the same run. Dropout is off (p = 0) so
that every provider computes the same function; all inputs are random (not zero).
"""

from __future__ import annotations

import pytest
import torch

from msta_fast.ops import extension
from msta_fast.ops.parity import AdapterCase, make_inputs, relative_error
from msta_fast.ops.reference import msta_adapter_ref

PEAK_BF16_FLOPS = 790e12
HBM_BYTES_PER_S = {"H200": 4.3e12, "H100": 3.0e12}

CPU_CASES = {
    "video-B2-T8-7x7-C768-r128": AdapterCase(batch=2, width=768, dim=128, grid=(8, 7, 7), scale=0.005),
    "text-40x32-C512-r128": AdapterCase(batch=40, width=512, dim=128, text_tokens=32, scale=0.005),
}
GPU_CASES = {
    f"{tower}-r{r}": case
    for r in (256, 128)
    for tower, case in (
        ("video-B32-T8-14x14-C768", AdapterCase(batch=32, width=768, dim=r, grid=(8, 14, 14), scale=0.005)),
        ("text-400x32-C512", AdapterCase(batch=400, width=512, dim=r, text_tokens=32, scale=0.005)),
    )
}
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device")


def provider_op(name: str):
    if name == "eager":
        return msta_adapter_ref
    if name == "compile":
        return torch.compile(msta_adapter_ref)
    if name == "triton":
        from msta_fast.kernels.msta_chain import msta_adapter_triton

        return msta_adapter_triton
    if name == "ext":
        from msta_fast.ops.extension_ops import msta_adapter_ext

        extension.load()
        return msta_adapter_ext
    raise ValueError(name)


def step_fn(op, case: AdapterCase, x, weights, residual, phase: str):
    """A closure running one forward (``fwd``) or forward + backward (``fwd+bwd``) of the layer."""
    options = case.options()
    grad_out = torch.randn_like(x)
    inputs = [t for t in [x, *weights] if t is not None]

    def fwd():
        return op(x, *weights, residual=residual, **options)

    def fwd_bwd():
        out = op(x, *weights, residual=residual, **options)
        return torch.autograd.grad(out, inputs, grad_out)

    return fwd if phase == "fwd" else fwd_bwd


def work(case: AdapterCase, phase: str, elem_bytes: int) -> tuple[float, float]:
    """(useful FLOPs, minimum bytes) of one call (module docstring)."""
    tokens = case.rows * case.tokens
    C, r = case.width, case.dim
    flops = 2.0 * tokens * (C * r + r * r + r * C)
    passes = 2 if phase == "fwd" else 5
    return (flops if phase == "fwd" else 3 * flops), passes * tokens * C * elem_bytes


@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", ["eager", "ext"])
@pytest.mark.parametrize("case_name", list(CPU_CASES))
def test_cpu_layer(benchmark, record_result, case_name, provider, phase):
    """CPU, fp32: reference vs extension (parity checked first)."""
    case = CPU_CASES[case_name]
    x, weights, residual = make_inputs(case, torch.float32, "cpu")
    op = provider_op(provider)
    err = relative_error(op(x, *weights, residual=residual, **case.options()),
                         msta_adapter_ref(x, *weights, residual=residual, **case.options()))
    assert err < 1e-5, f"{provider} differs from the reference: relative error {err:.3g}"
    fn = step_fn(op, case, x, weights, residual, phase)
    benchmark.pedantic(fn, rounds=10, warmup_rounds=2)
    seconds = benchmark.stats.stats.median
    flops, nbytes = work(case, phase, 4)
    benchmark.extra_info.update(gflops=flops / seconds / 1e9)
    record_result("msta_layer_cpu", case=case_name, provider=provider, phase=phase, dtype="fp32",
                  median_ms=seconds * 1e3, gflop_s=flops / seconds / 1e9, gb_s=nbytes / seconds / 1e9,
                  rel_err=err)


@needs_gpu
@pytest.mark.parametrize("phase", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case_name", list(GPU_CASES))
def test_gpu_layer(benchmark, record_result, case_name, phase):
    """GPU, bf16: every provider in one run; speed-ups relative to eager, roofline fraction."""
    import triton.testing

    torch.backends.cuda.matmul.allow_tf32 = False
    case = GPU_CASES[case_name]
    x, weights, residual = make_inputs(case, torch.bfloat16, "cuda")
    with torch.no_grad():
        gold = msta_adapter_ref(*(t.float() if t is not None else None for t in [x, *weights]),
                                residual=residual.float(), **case.options())
    flops, nbytes = work(case, phase, 2)
    name = torch.cuda.get_device_name()
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in name), HBM_BYTES_PER_S["H100"])
    floor_s = max(flops / PEAK_BF16_FLOPS, nbytes / bandwidth)
    times = {}
    for provider in ("eager", "compile", "triton", "ext"):
        op = provider_op(provider)
        with torch.no_grad():
            err = relative_error(op(x, *weights, residual=residual, **case.options()), gold)
        fn = step_fn(op, case, x, weights, residual, phase)
        fn()  # compile / autotune outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        times[provider] = ms
        record_result("msta_layer_gpu", case=case_name, phase=phase, provider=provider, dtype="bf16", median_ms=ms,
                      speedup_vs_eager=times["eager"] / ms, tflop_s=flops / (ms * 1e-3) / 1e12,
                      gb_s=nbytes / (ms * 1e-3) / 1e9, roofline_fraction=floor_s / (ms * 1e-3),
                      extra_peak_mb=peak_mb, rel_err_vs_fp32=err)
    triton_step = step_fn(provider_op("triton"), case, x, weights, residual, phase)

    def synced():
        triton_step()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=10, warmup_rounds=2)
    benchmark.extra_info.update({f"{p}_ms": t for p, t in times.items()})
