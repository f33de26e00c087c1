"""Step 3: one MSTA video layer and one text layer at ViCLIP-B/16 shapes in bf16, adapter dims 256 and 128, forward
and forward + backward: eager reference, ``torch.compile`` of it, the Triton kernels. Milliseconds, TFLOP/s, GB/s,
the fraction of the roofline floor measured by the probe step, speed-ups against eager and ``torch.compile``, and
the memory one call allocates.

Compiles (Inductor, Triton's autotuning) first run in parallel processes, one per case and provider; their caches
are on disk, so the timing process only loads what they built. FLOPs and bytes: ``bench_msta_layer.work``.
"""

from __future__ import annotations

from common import Step, compile_backend, parse_args, run_parallel

PROVIDERS = ("eager", "compile", "triton")
PHASES = ("fwd", "fwd+bwd")


def cases(dry: bool) -> dict:
    from bench_msta_layer import GPU_CASES

    from msta_fast.ops.parity import AdapterCase

    if dry:
        return {"video-B1-T4-2x3-C64-r16": AdapterCase(batch=1, width=64, dim=16, grid=(4, 2, 3), scale=0.005),
                "text-2x5-C64-r16": AdapterCase(batch=2, width=64, dim=16, text_tokens=5, scale=0.005)}
    return GPU_CASES


def provider(name: str, dry: bool):
    from bench_msta_layer import provider_op

    return provider_op(name, compile_backend(dry))


def inputs(case, dry: bool):
    import torch

    from msta_fast.ops.parity import make_inputs

    torch.manual_seed(0)
    return make_inputs(case, torch.float32 if dry else torch.bfloat16, "cpu" if dry else "cuda")


def warm(item: tuple[str, str, bool]) -> dict:
    """Compile one provider for one case: without gradients, forward and backward (and, for Triton, the dropout
    variant that the training step of the next step launches)."""
    import dataclasses

    from bench_msta_layer import step_fn

    case_name, name, dry = item
    case = cases(dry)[case_name]
    op = provider(name, dry)
    import torch

    for c in [case] + ([dataclasses.replace(case, dropout_p=0.1)] if name == "triton" else []):
        x, weights, residual = inputs(c, dry)
        with torch.no_grad():  # the parity check's call: an inference graph of its own for torch.compile
            op(x, *weights, residual=residual, **c.options())
        step_fn(op, c, x, weights, residual, "fwd+bwd")()
    return {"warmed": f"{case_name}/{name}"}


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    step = Step("layer", args)
    import torch
    from bench_msta_layer import step_fn, work

    from msta_fast.ops.parity import relative_error
    from msta_fast.ops.reference import msta_adapter_ref

    torch.backends.cuda.matmul.allow_tf32 = False
    all_cases = cases(step.dry)
    items = [(c, p, step.dry) for c in all_cases for p in ("compile", "triton")]
    for item, res in zip(items, run_parallel(warm, items, step.jobs), strict=True):
        if "error" in res:
            step.record(kind="warm-up", case=item[0], provider=item[1], error=res["error"])
    roof = step.roofline()
    elem = 4 if step.dry else 2
    failed, headline = [], ""
    for case_name, case in all_cases.items():
        x, weights, residual = inputs(case, step.dry)
        with torch.no_grad():
            gold = msta_adapter_ref(*(t.float() if t is not None else None for t in [x, *weights]),
                                    residual=residual.float(), **case.options())
        ops, errors = {}, {}
        for name in PROVIDERS:
            try:
                ops[name] = provider(name, step.dry)
                with torch.no_grad():
                    errors[name] = relative_error(ops[name](x, *weights, residual=residual, **case.options()), gold)
            except Exception as err:  # noqa: BLE001 - record, measure the others
                ops.pop(name, None)
                failed.append(f"{case_name}/{name}")
                step.record(kind="layer", case=case_name, provider=name, error=f"{type(err).__name__}: {err}"[:500])
        for phase in PHASES:
            fns = {name: step_fn(op, case, x, weights, residual, phase) for name, op in ops.items()}
            for fn in fns.values():
                fn()  # compile / autotune (from the warm caches) outside the timing
            peaks = {name: step.peak_mb(fn) for name, fn in fns.items()}
            ms = step.time_ms(fns)
            flops, nbytes = work(case, phase, elem)
            floor_ms = max(flops / roof["bf16_flops"], nbytes / roof["bytes_per_s"]) * 1e3
            for name, t in ms.items():
                step.record(kind="layer", case=case_name, phase=phase, provider=name, dtype="fp32" if step.dry
                            else "bf16", ms=t, vs_eager=ms.get("eager", float("nan")) / t,
                            vs_compile=ms.get("compile", float("nan")) / t, tflop_s=flops / (t * 1e-3) / 1e12,
                            gb_s=nbytes / (t * 1e-3) / 1e9, roofline_fraction=floor_ms / t,
                            extra_peak_mb=peaks[name], rel_err_vs_fp32=errors[name])
            if case_name.startswith("video") and case.dim == max(c.dim for c in all_cases.values()) \
                    and phase == "fwd+bwd" and "triton" in ms:
                t = ms["triton"]
                headline = (f"{case_name} fwd+bwd: Triton {t:.3g} ms, {ms.get('eager', float('nan')) / t:.2f}x eager, "
                            f"{ms.get('compile', float('nan')) / t:.2f}x torch.compile, {floor_ms / t:.0%} of the "
                            f"roofline")
    step.headline(headline + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
