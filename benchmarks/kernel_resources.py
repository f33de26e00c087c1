"""Static resources of every Triton kernel config the ops can launch, compiled for sm_90 (H100 / H200) without a GPU.

For each kernel, each variant the ops launch (fused halo / clip tiles, plain up-projection, the token convolution's
kernels) and each autotune config that survives the autotuner's own pruning at ViCLIP-B/16 and L/14 shapes in bf16
(adapter dims 128 and 256; widths 768 / 1024 compile to the same code): registers per thread, spilled bytes, shared
memory, and the occupancy they allow on one sm_90 SM (65,536 registers, 228 KiB shared memory, 2,048 threads,
32 blocks). Triton compiles each config to PTX and ptxas to a cubin, as on the GPU; ptxas's ``-v`` report gives the
registers and spills, Triton's metadata the shared memory.

    python benchmarks/kernel_resources.py                 # every config -> benchmarks/results/kernel_resources_sm90.*
    python benchmarks/kernel_resources.py --subset ci --json OUT.json   # the largest tile of each kernel variant

The GPU machine runs an older Triton with its own ptxas: its register counts may differ by a few; spills and
launchability are what the tests hold the committed table to.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":
    # Compiling needs triton's real JIT, not the interpreter; set before anything imports triton.
    os.environ["TRITON_INTERPRET"] = "0"

RESULTS = Path(__file__).resolve().parent / "results"
TABLE_STEM = RESULTS / "kernel_resources_sm90"

# One sm_90 SM (CUDA occupancy calculator, compute capability 9.0).
SM90 = dict(regs=65536, reg_unit=256, max_regs_per_thread=255, smem=233472, smem_per_block=232448,
            smem_reserved=1024, smem_unit=128, threads=2048, max_threads_per_block=1024, blocks=32)
DIMS = (128, 256)
# Pointers whose buffers are fp32 whatever the activations' dtype (atomically reduced gradients).
FP32_POINTERS = ("dcw_ptr", "dcb_ptr", "dw_ptr", "db_ptr")
FP32_SCALARS = ("scale", "gscale", "p_drop", "keep_scale", "xscale")
# Integer arguments that are multiples of 16 at every shape the table covers (so Triton specialises them).
DIVISIBLE_INTS = ("C", "R")


@dataclass(frozen=True)
class Variant:
    """One way an op launches a kernel: the kernel, the fixed constexprs, and whether the adapter dim applies."""

    module: str
    kernel: str
    name: str
    constexprs: dict
    uses_dim: bool = True


def variants() -> list[Variant]:
    """What the ops launch in bf16 (the heaviest flags of each: biases on, dropout on in training)."""
    ah, ut, td = "adapter_hidden", "up_tconv", "token_dwconv"
    halo = dict(LAYOUT=0, KT=3, KH=1, KW=1, HALO=1, FRAME_T=0, HAS_CLS=1)
    clip = dict(LAYOUT=1, KT=3, KH=1, KW=1, HALO=0, FRAME_T=8, HAS_CLS=1)
    plain = dict(LAYOUT=0, KT=1, KH=1, KW=1, HALO=0, FRAME_T=0, HAS_CLS=1)
    out = [
        Variant(ah, "_hidden_fwd_kernel", "train", dict(HAS_BD=True, HAS_BS=True, DROPOUT=True)),
        Variant(ah, "_hidden_bwd_kernel", "train", dict(HAS_BD=True, HAS_BS=True, DROPOUT=True)),
        Variant(ut, "_up_tconv_fwd_kernel", "halo-k311", dict(HAS_BU=True, HAS_CONV=True, HAS_CB=True, HAS_RES=True,
                                                                **halo)),
        Variant(ut, "_up_tconv_fwd_kernel", "clip-k311-T8", dict(HAS_BU=True, HAS_CONV=True, HAS_CB=True,
                                                                   HAS_RES=True, **clip)),
        Variant(ut, "_up_tconv_fwd_kernel", "plain", dict(HAS_BU=True, HAS_CONV=False, HAS_CB=False, HAS_RES=True,
                                                          **plain)),
        Variant(ut, "_up_tconv_bwd_kernel", "halo-k311", dict(HAS_BU=True, HAS_CB=True, **halo)),
        Variant(ut, "_up_tconv_bwd_kernel", "clip-k311-T8", dict(HAS_BU=True, HAS_CB=True, **clip)),
    ]
    for k in ((3, 1, 1), (1, 3, 3), (3, 3, 3)):
        taps = dict(LAYOUT=0, KT=k[0], KH=k[1], KW=k[2])
        tag = "k" + "".join(map(str, k))
        out.append(Variant(td, "_token_dwconv_fwd_kernel", tag, dict(HAS_BIAS=True, **taps), uses_dim=False))
        out.append(Variant(td, "_token_dwconv_bwd_kernel", tag, dict(NEED_DU=True, NEED_DW=True, HAS_BIAS=True,
                                                                     **taps), uses_dim=False))
    return out


class _FakePointer:
    """What the autotuners' prune functions read from a pointer argument."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes

    def element_size(self) -> int:
        return self.nbytes


def _python_function(kernel):
    """The plain function under an autotuner / JIT / interpreter wrapper."""
    import inspect

    while not inspect.isfunction(kernel):
        kernel = kernel.fn
    return kernel


def _pointer_args(kernel) -> dict:
    """The kernel's pointer arguments as bf16 (fp32 for the gradient buffers), for the prune functions."""
    import inspect

    names = inspect.signature(_python_function(kernel)).parameters
    return {n: _FakePointer(4 if n in FP32_POINTERS else 2) for n in names if n.endswith("_ptr")}


def _module(name: str):
    import importlib

    return importlib.import_module(f"msta_fast.kernels.{name}")


def configs_for(variant: Variant, dim: int | None) -> list[dict]:
    """The autotune configs (kwargs, num_warps, num_stages) the autotuner keeps for this variant in bf16."""
    module = _module(variant.module)
    meta = dict(variant.constexprs)
    if variant.uses_dim:
        meta["BLOCK_R"] = max(16, 1 << (dim - 1).bit_length())
    tuning = module.TUNING[variant.kernel]  # what the kernel's autotuner is built from
    configs = tuning["configs"]
    prune = (tuning.get("prune_configs_by") or {}).get("early_config_prune")
    named = _pointer_args(getattr(module, variant.kernel))
    kept = prune(configs, named, **meta) if prune else configs
    return [dict(kwargs=dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages) for c in kept]


@dataclass
class Point:
    """One compile: a variant, an adapter dim (None: the kernel does not depend on it) and a config."""

    module: str
    kernel: str
    variant: str
    dim: int | None
    config: dict
    result: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        c = self.config
        blocks = ",".join(f"{k}={v}" for k, v in sorted(c["kwargs"].items()))
        return f"{self.kernel}|{self.variant}|r{self.dim}|{blocks}|w{c['num_warps']}s{c['num_stages']}"


def launch_space() -> list[Point]:
    """Every (kernel variant, dim, config) the ops can launch at the table's shapes."""
    points = []
    for v in variants():
        for dim in DIMS if v.uses_dim else (None,):
            points += [Point(v.module, v.kernel, v.name, dim, c) for c in configs_for(v, dim)]
    # The dropout-mask export (the reference's fallback) launches one fixed tile.
    points.append(Point("adapter_hidden", "_dropout_keep_kernel", "mask", None,
                        dict(kwargs=dict(BLOCK_M=32, BLOCK_N=32), num_warps=4, num_stages=2)))
    return points


def ci_subset(points: list[Point]) -> list[Point]:
    """Per kernel variant, the config with the largest register tile at the largest dim: the first to spill."""
    best: dict[tuple, Point] = {}
    for p in points:
        k = (p.kernel, p.variant)
        size = (p.dim or 0, _tile(p.config), p.config["num_warps"] * -1)
        if k not in best or size > (best[k].dim or 0, _tile(best[k].config), best[k].config["num_warps"] * -1):
            best[k] = p
    return list(best.values())


def _tile(config: dict) -> int:
    kw = config["kwargs"]
    return kw.get("BLOCK_M", 1) * max(kw.get("BLOCK_N", 1), kw.get("BLOCK_K", 1))


def occupancy(regs: int, smem: int, warps: int) -> dict:
    """Blocks and warps per sm_90 SM that these resources allow, what limits them, and whether it launches."""
    s = SM90
    threads = warps * 32
    problems = []
    if regs > s["max_regs_per_thread"]:
        problems.append(f"{regs} registers per thread > {s['max_regs_per_thread']}")
    if smem > s["smem_per_block"]:
        problems.append(f"{smem} B shared memory > {s['smem_per_block']} per block")
    if threads > s["max_threads_per_block"]:
        problems.append(f"{threads} threads per block > {s['max_threads_per_block']}")
    regs_per_warp = -(-max(regs, 1) * 32 // s["reg_unit"]) * s["reg_unit"]
    smem_alloc = -(-(smem + s["smem_reserved"]) // s["smem_unit"]) * s["smem_unit"]
    limits = {
        "registers": (s["regs"] // regs_per_warp) // warps,
        "shared memory": s["smem"] // smem_alloc,
        "threads": s["threads"] // threads,
        "blocks": s["blocks"],
    }
    blocks = 0 if problems else min(limits.values())
    limiter = min(limits, key=limits.get)
    return dict(launchable=not problems, problems=problems, blocks_per_sm=blocks, warps_per_sm=blocks * warps,
                occupancy=blocks * warps / (s["threads"] // 32), limiter=limiter)


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict:
    """Registers, stack frame, spill stores / loads and static shared memory from ``ptxas -v``."""
    regs = _PTXAS_REGS.findall(log)
    spills = _PTXAS_SPILL.findall(log)
    smem = _PTXAS_SMEM.findall(log)
    if not regs:
        raise RuntimeError(f"no register count in the ptxas report:\n{log[-2000:]}")
    stack, stores, loads = (max(int(s[i]) for s in spills) for i in range(3)) if spills else (0, 0, 0)
    return dict(regs=max(map(int, regs)), stack=stack, spill_stores=stores, spill_loads=loads,
                static_smem=max(map(int, smem)) if smem else 0)


def compile_point(p: Point) -> dict:
    """Compile one point for sm_90 and measure it (run with TRITON_INTERPRET=0)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget

    kernel = getattr(_module(p.module), p.kernel)
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    v = next((v for v in variants() if (v.kernel, v.name) == (p.kernel, p.variant)), None)
    constexprs = dict(v.constexprs if v else {}, **p.config["kwargs"])
    if p.dim is not None:
        constexprs["BLOCK_R"] = max(16, 1 << (p.dim - 1).bit_length())
    constexprs["PRECISION"] = "tf32"  # bf16 / fp16 dots (runtime.dot_precision)
    constexprs = {k: val for k, val in constexprs.items() if k in fn.arg_names}
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            signature[name] = "*fp32" if name in FP32_POINTERS else "*i8" if name == "keep_ptr" else "*bf16"
        else:
            signature[name] = "fp32" if name in FP32_SCALARS else "i32"
        if name.endswith("_ptr") or name in DIVISIBLE_INTS:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    log = io.StringIO()
    start = time.perf_counter()
    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas's -v report (registers, spills)
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": p.config["num_warps"], "num_stages": p.config["num_stages"]})
    seconds = time.perf_counter() - start
    ptxas = parse_ptxas(log.getvalue())
    smem = int(compiled.metadata.shared) + ptxas["static_smem"]
    return dict(ptxas, smem=smem, compile_s=round(seconds, 1),
                **occupancy(ptxas["regs"], smem, p.config["num_warps"]))


def _worker(point: dict) -> dict:
    p = Point(**point)
    try:
        return compile_point(p)
    except Exception as err:  # noqa: BLE001 - a config that does not compile is a row of the table, not a crash
        return dict(error=f"{type(err).__name__}: {str(err)[:500]}", launchable=False)


def measure(points: list[Point], jobs: int) -> list[Point]:
    """Compile every point (``jobs`` processes), printing one line per point as it finishes."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_worker, asdict(p)): p for p in points}
        for n, fut in enumerate(as_completed(futures), 1):
            p = futures[fut]
            p.result = fut.result()
            r = p.result
            status = r.get("error") or (f"regs {r['regs']} spill {r['spill_stores']}/{r['spill_loads']} "
                                        f"smem {r['smem']} blocks/SM {r['blocks_per_sm']} ({r['compile_s']} s)")
            print(f"[{n}/{len(points)}] {p.key}: {status}", file=sys.stderr, flush=True)
    return points


def problems(points: list[Point]) -> list[str]:
    """Every point that spills, does not compile or cannot launch on sm_90."""
    out = []
    for p in points:
        r = p.result
        if r.get("error"):
            out.append(f"{p.key}: does not compile: {r['error']}")
        elif r["spill_stores"] or r["spill_loads"]:
            out.append(f"{p.key}: spills {r['spill_stores']} B stores / {r['spill_loads']} B loads")
        elif not r["launchable"]:
            out.append(f"{p.key}: cannot launch: {'; '.join(r['problems'])}")
    return out


def environment() -> dict:
    import platform

    import torch
    import triton

    return dict(target="sm_90 (H100 / H200)", triton=triton.__version__, torch=torch.__version__,
                python=platform.python_version(), date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def markdown(env: dict, points: list[Point]) -> str:
    lines = ["# Triton kernels on sm_90: registers, spills, shared memory, occupancy", "",
             "Generated by `python benchmarks/kernel_resources.py` (compiled ahead of time, no GPU): every autotune",
             "config the ops can launch in bf16 at ViCLIP-B/16 and L/14 shapes (adapter dims 128 and 256). One SM:",
             "65,536 registers, 228 KiB shared memory, 2,048 threads (64 warps), 32 blocks. `blocks/SM`: resident",
             "blocks the resources allow; `occupancy`: resident warps / 64; `limit`: what caps them.", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()] + [""]
    head = ["kernel", "variant", "dim", "blocks", "warps", "stages", "regs", "spill B", "smem B", "blocks/SM",
            "occupancy", "limit", "compile s"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for p in sorted(points, key=lambda p: p.key):
        r, c = p.result, p.config
        blocks = " ".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in sorted(c["kwargs"].items()))
        if r.get("error"):
            cells = ["error: " + r["error"][:80]] + [""] * 7
        else:
            cells = [str(r["regs"]), f"{r['spill_stores']}/{r['spill_loads']}", str(r["smem"]),
                     str(r["blocks_per_sm"]), f"{r['occupancy']:.0%}", r["limiter"] if r["launchable"] else
                     "cannot launch", str(r["compile_s"])]
        lines.append("| " + " | ".join([p.kernel.strip("_"), p.variant, str(p.dim or "-"), blocks,
                                         str(c["num_warps"]), str(c["num_stages"]), *cells]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=["all", "ci"], default="all",
                        help="all: every config (the committed table); ci: the largest tile of each kernel variant")
    parser.add_argument("--json", type=Path, help="write the rows here instead of the committed table")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    args = parser.parse_args(argv)
    # A fresh cache: a cached kernel is not compiled again, and only a compile prints ptxas's report.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernel-resources-")
    points = launch_space()
    if args.subset == "ci":
        points = ci_subset(points)
    measure(points, args.jobs)
    env = environment()
    rows = [dict(key=p.key, **asdict(p)) for p in points]
    if args.json:
        args.json.write_text(json.dumps(dict(environment=env, rows=rows), indent=1) + "\n")
    else:
        TABLE_STEM.parent.mkdir(exist_ok=True)
        TABLE_STEM.with_suffix(".json").write_text(json.dumps(dict(environment=env, rows=rows), indent=1) + "\n")
        TABLE_STEM.with_suffix(".md").write_text(markdown(env, points))
    bad = problems(points)
    for line in bad:
        print("PROBLEM", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
