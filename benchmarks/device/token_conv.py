"""Step 5: M2-CLIP's depthwise token convolution alone at the TED-Adapter's ViCLIP-B/16 shapes in bf16 (32 clips,
8 x 14 x 14 patches, 384 channels; the (3,1,1) TConv and the (1,3,3) SConv), forward and forward + backward:
eager reference (permute, ``conv3d``, permute), ``torch.compile`` of it, the Triton kernel. The op is memory-bound:
the floor is bytes / the bandwidth the probe step measured (``bench_token_dwconv.min_bytes``)."""

from __future__ import annotations

from common import Step, compile_backend, parse_args, run_parallel

PROVIDERS = ("eager", "compile", "triton")
PHASES = ("fwd", "fwd+bwd")
DRY_CASES = {"B1-T4-3x2-C24-k311": (1, (4, 3, 2), 24, (3, 1, 1)), "B1-T4-3x2-C24-k133": (1, (4, 3, 2), 24, (1, 3, 3))}


def cases(dry: bool) -> dict:
    from bench_token_dwconv import GPU_CASES

    return DRY_CASES if dry else GPU_CASES


def inputs(name: str, dry: bool):
    import torch
    from bench_token_dwconv import make_case

    torch.manual_seed(0)
    return make_case(name, cases(dry), torch.float32 if dry else torch.bfloat16, "cpu" if dry else "cuda")


def warm(item: tuple[str, str, bool]) -> dict:
    """Compile one provider for one case: without gradients, forward and backward."""
    import torch
    from bench_token_dwconv import provider_op, step_fn

    name, provider, dry = item
    u, w, b, grid = inputs(name, dry)
    op = provider_op(provider, compile_backend(dry))
    with torch.no_grad():  # the parity check's call: an inference graph of its own for torch.compile
        op(u, w, b, grid, "viclip")
    step_fn(op, u, w, b, grid, "fwd+bwd")()
    return {"warmed": f"{name}/{provider}"}


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    step = Step("token_conv", args)
    import torch
    from bench_token_dwconv import min_bytes, provider_op, step_fn

    from msta_fast.ops.parity import relative_error
    from msta_fast.ops.reference import token_dwconv_ref

    items = [(c, p, step.dry) for c in cases(step.dry) for p in ("compile", "triton")]
    for item, res in zip(items, run_parallel(warm, items, step.jobs), strict=True):
        if "error" in res:
            step.record(kind="warm-up", case=item[0], provider=item[1], error=res["error"])
    bandwidth = step.roofline()["bytes_per_s"]
    failed, best = [], []
    for name in cases(step.dry):
        u, w, b, grid = inputs(name, step.dry)
        with torch.no_grad():
            gold = token_dwconv_ref(u.float(), w.float(), b.float(), grid, "viclip")
        ops, errors = {}, {}
        for p in PROVIDERS:
            try:
                ops[p] = provider_op(p, compile_backend(step.dry))
                with torch.no_grad():
                    errors[p] = relative_error(ops[p](u, w, b, grid, "viclip"), gold)
            except Exception as err:  # noqa: BLE001 - record, measure the others
                ops.pop(p, None)
                failed.append(f"{name}/{p}")
                step.record(kind="token_conv", case=name, provider=p, error=f"{type(err).__name__}: {err}"[:500])
        for phase in PHASES:
            fns = {p: step_fn(op, u, w, b, grid, phase) for p, op in ops.items()}
            for fn in fns.values():
                fn()
            ms = step.time_ms(fns)
            floor_ms = min_bytes(u, phase) / bandwidth * 1e3
            for p, t in ms.items():
                step.record(kind="token_conv", case=name, phase=phase, provider=p, ms=t,
                            vs_eager=ms.get("eager", float("nan")) / t, vs_compile=ms.get("compile", float("nan")) / t,
                            gb_s=min_bytes(u, phase) / (t * 1e-3) / 1e9, roofline_fraction=floor_ms / t,
                            rel_err_vs_fp32=errors[p])
            if phase == "fwd+bwd" and "triton" in ms:
                best.append(f"{name.rsplit('-', 1)[-1]} {ms.get('eager', float('nan')) / ms['triton']:.2f}x eager "
                            f"({floor_ms / ms['triton']:.0%} of bandwidth)")
    step.headline("Triton fwd+bwd: " + ", ".join(best) + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
