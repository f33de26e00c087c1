"""Step 2: parity of every Triton op with the PyTorch reference at ViCLIP-B/16 shapes, in bf16 and fp32, forward
and every gradient.

Ops: the MSTA adapter in the ViCLIP token layout with the (3,1,1) temporal kernel (the fused halo tiles), in the
frame-row layout (clip tiles), with a (3,3,3) kernel (unfused: up-projection, then the token convolution), the text
tower's adapter (no convolution); M2-CLIP's token convolution with (3,1,1) and (1,3,3) kernels. Shapes: 32 clips of
8 x 14 x 14 patches + a class token, width 768, adapter dim 256 (bf16) or 64 (fp32: exact fp32 dots unroll to FMAs
and ptxas needs minutes per config at 256); text 400 prompts x 32 tokens, width 512; token convolution 384 channels.

Rule (as the test suite's): against a float64 reference on the same (rounded) inputs, the op's relative error is at
most twice PyTorch's own in that dtype plus 1e-2 (bf16) or 1e-5 (fp32). Each (op, dtype) runs in its own process,
so that their compiles overlap; autotuning is off (``MSTA_FAST_AUTOTUNE=first``): parity holds for every config.
"""

from __future__ import annotations

import os

os.environ.setdefault("MSTA_FAST_AUTOTUNE", "first")  # before triton or msta_fast is imported (here and in workers)

from common import Step, parse_args, run_parallel  # noqa: E402

ATOL = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 1e-2}
OPS = ("video-viclip-k311", "video-frames-k311", "video-viclip-k333", "text", "token-k311", "token-k133")


def adapter_case(op: str, dim: int, dry: bool):
    from msta_fast.ops.parity import AdapterCase

    if op == "text":
        return AdapterCase(batch=2, width=64, dim=dim, text_tokens=5) if dry else \
            AdapterCase(batch=400, width=512, dim=dim, text_tokens=32)
    layout = "frames" if "frames" in op else "viclip"
    kernel = (3, 3, 3) if op.endswith("k333") else (3, 1, 1)
    grid, batch, width = ((4, 2, 3), 1, 64) if dry else ((8, 14, 14), 32, 768)
    return AdapterCase(batch=batch, width=width, dim=dim, grid=grid, kernel=kernel, layout=layout)


def errors(item: tuple) -> list[dict]:
    """Relative errors of the fast op (``triton``, or ``ext``: the C++/CUDA extension) and of PyTorch in the same
    dtype against float64, output and gradients. ``item``: (op, dtype name, dry run, provider)."""
    op, dtype_name, dry, provider = item
    import torch

    from msta_fast.ops.parity import forward_and_grads, make_inputs, relative_error
    from msta_fast.ops.reference import msta_adapter_ref, token_dwconv_ref

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    device = "cpu" if dry else "cuda"
    dtype = getattr(torch, dtype_name)
    # fp32 Triton at dim 64: compile time (module docstring); the extension compiles nothing per shape
    dim = 16 if dry else (256 if dtype != torch.float32 or provider == "ext" else 64)

    def cast(t, dt):
        return t.detach().to(dt).requires_grad_() if t is not None else None

    if op.startswith("token"):
        if provider == "ext":
            from msta_fast.ops.extension_ops import token_dwconv_ext as fast_op
        else:
            from msta_fast.kernels.token_dwconv import token_dwconv_triton as fast_op

        kernel = (3, 1, 1) if op.endswith("k311") else (1, 3, 3)
        batch, grid, channels = (1, (4, 3, 2), 24) if dry else (32, (8, 14, 14), 384)
        T, H, W = grid
        u = torch.randn(batch, H * W * T, channels, device=device)
        w = torch.randn(channels, 1, *kernel, device=device) / 3
        b = torch.randn(channels, device=device)
        names = ("out", "u", "weight", "bias")

        def run(fn, tensors, grad=None):
            out = fn(*tensors, grid, "viclip")
            grad = torch.randn_like(out) if grad is None else grad
            return [out, *torch.autograd.grad(out, tensors, grad)], grad

        low = [cast(t, dtype) for t in (u, w, b)]
        gold, grad = run(token_dwconv_ref, [cast(t, torch.float64) for t in low])
        ref, _ = run(token_dwconv_ref, low, grad.to(dtype))
        fast, _ = run(fast_op, low, grad.to(dtype))
        triples = zip(names, fast, ref, gold, strict=True)
    else:
        if provider == "ext":
            from msta_fast.ops.extension_ops import msta_adapter_ext as fast_op
        else:
            from msta_fast.kernels.msta_chain import msta_adapter_triton as fast_op

        case = adapter_case(op, dim, dry)
        x, weights, residual = make_inputs(case, torch.float32, device)
        low_x, low_w, low_r = cast(x, dtype), [cast(w, dtype) for w in weights], cast(residual, dtype)
        gold, gold_grads, grad = forward_and_grads(msta_adapter_ref, cast(low_x, torch.float64),
                                                   [cast(w, torch.float64) for w in low_w],
                                                   cast(low_r, torch.float64), **case.options())
        ref, ref_grads, _ = forward_and_grads(msta_adapter_ref, low_x, low_w, low_r, grad.to(dtype), **case.options())
        fast, fast_grads, _ = forward_and_grads(fast_op, low_x, low_w, low_r, grad.to(dtype),
                                                **case.options())
        keys = [k for k in gold_grads if gold_grads[k] is not None]
        triples = [("out", fast, ref, gold)] + [(k, fast_grads[k], ref_grads[k], gold_grads[k]) for k in keys]
    rows = []
    for name, f, r, g in triples:
        err_fast, err_torch = relative_error(f, g), relative_error(r, g)
        bound = 2 * err_torch + ATOL[dtype_name]
        rows.append(dict(op=op, provider=provider, dtype=dtype_name, dim=None if op.startswith("token") else dim,
                         tensor=name, err_fast=err_fast, err_torch=err_torch, bound=bound, ok=err_fast <= bound))
    return rows


def record(step: Step, items: list[tuple], results: list) -> tuple[str, list[str]]:
    """Record every row of :func:`errors`' results; returns a one-line summary and what failed (a case that raised,
    a tensor over its bound)."""
    failed, ok, total = [], 0, 0
    for (op, dt, _, provider), rows in zip(items, results, strict=True):
        if isinstance(rows, dict):  # the case raised
            step.record(kind="parity", op=op, provider=provider, dtype=dt, error=rows["error"], ok=False)
            failed.append(f"{op}/{dt}")
            continue
        for row in rows:
            step.record(kind="parity", **row)
            total += 1
            ok += row["ok"]
            if not row["ok"]:
                failed.append(f"{op}/{dt}/{row['tensor']}")
    summary = (f"{ok}/{total} tensors within bounds ({len({i[0] for i in items})} ops x "
               f"{'/'.join(sorted({i[1] for i in items}))})" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return summary, failed


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    step = Step("parity", args)
    # The interpreter gives garbage in bf16: the dry run checks fp16 in its place.
    dtypes = ("float16", "float32") if step.dry else ("bfloat16", "float32")
    items = [(op, dt, step.dry, "triton") for dt in dtypes for op in OPS]
    summary, failed = record(step, items, run_parallel(errors, items, step.jobs))
    step.headline(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
