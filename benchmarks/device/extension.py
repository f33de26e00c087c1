"""Step 6 (last: nvcc is slow): the C++/CUDA extension's build (timed), its parity with the reference at
ViCLIP-B/16 shapes in bf16 and fp32 (the rule and ops of the parity step), and its timings against the eager
reference: one MSTA video and text layer (adapter dim 256) and the token convolution, forward and forward +
backward."""

from __future__ import annotations

import time

from common import Step, parse_args, run_parallel


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    step = Step("extension", args)
    import bench_msta_layer as layer_bench
    import bench_token_dwconv as conv_bench
    import layer
    import parity
    import token_conv

    from msta_fast.ops import extension

    start = time.perf_counter()
    path = extension.load(with_cuda=not step.dry)
    build_s = time.perf_counter() - start
    step.record(kind="build", cuda=not step.dry, seconds=build_s, library=path.rsplit("/", 1)[-1])

    dtypes = ("float16", "float32") if step.dry else ("bfloat16", "float32")
    items = [(op, dt, step.dry, "ext") for dt in dtypes for op in parity.OPS]
    parity_summary, failed = parity.record(step, items, run_parallel(parity.errors, items, step.jobs))

    times = {}  # each timing runs on the extension loaded (built) above
    for name, case in layer.cases(step.dry).items():
        if case.dim != max(c.dim for c in layer.cases(step.dry).values()):
            continue
        x, weights, residual = layer.inputs(case, step.dry)
        ops = {p: layer_bench.provider_op(p) for p in ("eager", "ext")}
        for phase in ("fwd", "fwd+bwd"):
            fns = {p: layer_bench.step_fn(op, case, x, weights, residual, phase) for p, op in ops.items()}
            ms = step.time_ms(fns)
            times[f"{name} {phase}"] = ms["eager"] / ms["ext"]
            step.record(kind="ext-layer", case=name, phase=phase, eager_ms=ms["eager"], ext_ms=ms["ext"],
                        ext_vs_eager=ms["eager"] / ms["ext"])
    for name in token_conv.cases(step.dry):
        u, w, b, grid = token_conv.inputs(name, step.dry)
        for phase in ("fwd", "fwd+bwd"):
            fns = {p: conv_bench.step_fn(conv_bench.provider_op(p), u, w, b, grid, phase) for p in ("eager", "ext")}
            ms = step.time_ms(fns)
            step.record(kind="ext-token_conv", case=name, phase=phase, eager_ms=ms["eager"], ext_ms=ms["ext"],
                        ext_vs_eager=ms["eager"] / ms["ext"])
    video = next((v for k, v in times.items() if k.startswith("video") and k.endswith("fwd+bwd")), float("nan"))
    step.headline(f"build {build_s:.0f} s ({'CPU' if step.dry else 'CUDA'}); video layer fwd+bwd {video:.2f}x eager; "
                  f"parity {parity_summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
