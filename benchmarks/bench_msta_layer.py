"""Parity and throughput of one MSTA adapted layer (video and text tower), forward and forward + backward.

Providers: the eager reference (``msta_adapter_ref``), ``torch.compile`` of it, the fused Triton kernels and the
C++/CUDA extension. ``pytest benchmarks/bench_msta_layer.py --benchmark-only`` measures the CPU (fp32, small
shapes): eager, ``torch.compile``, the extension and ``auto`` (what the default backend picks) in one run,
round-robin, with speed-ups relative to eager.
On a GPU the device check (``benchmarks/device_check.sh``, steps ``layer`` and ``extension``) measures the
ViCLIP-B/16 shapes of :data:`GPU_CASES` in bf16 with these helpers, with achieved TFLOP/s and GB/s and the fraction
of the roofline floor that the check's probe measured:

    FLOPs (fwd)   = 2 * tokens * (C*r + r*r + r*C)        the three GEMMs; the depthwise conv is noise
    FLOPs (f+b)   = 3 * FLOPs (fwd)                        backward = input + weight gradients
    bytes (fwd)   = 2 * tokens * C * B                     read x, write out (B bytes per element)
    bytes (f+b)   = 5 * tokens * C * B                     + read dout, read x, write dx
    floor         = max(FLOPs / matmul rate, bytes / memory bandwidth)

Dropout is off (p = 0) so that every provider computes the same function; all inputs are random (not zero).
"""

from __future__ import annotations

import pytest
import torch
from timing import interleaved

from msta_fast.ops import extension
from msta_fast.ops.parity import AdapterCase, make_inputs, relative_error
from msta_fast.ops.reference import msta_adapter_ref

CPU_CASES = {
    "video-B2-T8-7x7-C768-r128": AdapterCase(batch=2, width=768, dim=128, grid=(8, 7, 7), scale=0.005),
    "text-40x32-C512-r128": AdapterCase(batch=40, width=512, dim=128, text_tokens=32, scale=0.005),
}
# ViCLIP-B/16: batch 32 x (1 + 8 x 14 x 14) tokens, width 768; text: 400 prompts x 32 tokens, width 512.
GPU_CASES = {
    f"{tower}-r{r}": case
    for r in (256, 128)
    for tower, case in (
        ("video-B32-T8-14x14-C768", AdapterCase(batch=32, width=768, dim=r, grid=(8, 14, 14), scale=0.005)),
        ("text-400x32-C512", AdapterCase(batch=400, width=512, dim=r, text_tokens=32, scale=0.005)),
    )
}


def provider_op(name: str, compile_backend: str = "inductor"):
    """The op of a provider: ``eager``, ``compile`` (``torch.compile`` of the reference), ``triton``, ``ext``, or
    ``auto`` (``msta_fast.ops.msta_adapter``: what the default backend picks, once the extension is loaded)."""
    if name == "eager":
        return msta_adapter_ref
    if name == "auto":
        from msta_fast.ops import msta_adapter

        return msta_adapter
    if name == "compile":
        return torch.compile(msta_adapter_ref, backend=compile_backend)
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
@pytest.mark.parametrize("case_name", list(CPU_CASES))
def test_cpu_layer(benchmark, record_result, case_name, phase):
    """CPU, fp32: eager, torch.compile, the extension and what ``auto`` picks, in one run, round-robin (parity
    checked first); the extension's own timing is pytest-benchmark's."""
    case = CPU_CASES[case_name]
    x, weights, residual = make_inputs(case, torch.float32, "cpu")
    want = msta_adapter_ref(x, *weights, residual=residual, **case.options())
    fns, errors = {}, {}
    for provider in ("eager", "compile", "ext", "auto"):  # auto after ext: it may use the loaded extension
        op = provider_op(provider)
        errors[provider] = relative_error(op(x, *weights, residual=residual, **case.options()), want)
        assert errors[provider] < 1e-5, f"{provider} differs from the reference: relative error {errors[provider]:.3g}"
        fns[provider] = step_fn(op, case, x, weights, residual, phase)
    seconds = interleaved(fns, rounds=15, warmup=3)  # the warm-up rounds also compile
    flops, nbytes = work(case, phase, 4)
    for provider, s in seconds.items():
        record_result("msta_layer_cpu", case=case_name, provider=provider, phase=phase, dtype="fp32",
                      median_ms=s * 1e3, speedup_vs_eager=seconds["eager"] / s, gflop_s=flops / s / 1e9,
                      gb_s=nbytes / s / 1e9, rel_err=errors[provider])
    benchmark.extra_info.update({f"{p}_ms": s * 1e3 for p, s in seconds.items()})
    benchmark.pedantic(fns["ext"], rounds=5, warmup_rounds=1)
