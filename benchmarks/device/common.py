"""What every step of ``benchmarks/device_check.sh`` shares: its arguments, the device, result rows saved as they
come (to the run's results folder and to ``$OUT/device-check`` when ``$OUT`` is set), timing, parallel warm-up.

A step is a script run as ``python benchmarks/device/<step>.py --results DIR [--dry-run]``; ``--dry-run`` runs the
same code at tiny shapes on the CPU (Triton's interpreter, the C++ CPU op), so that the check cannot rot unseen.
Exit status: 0 done, :data:`SKIPPED` when the step does not apply here (a reason is recorded), anything else failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))  # the bench_*.py helpers and timing.py

SKIPPED = 3
# Nominal sm_90 figures (platform notes), used only when the probe step measured nothing.
NOMINAL_ROOFLINE = {"bf16_flops": 790e12, "bytes_per_s": 3.0e12, "source": "nominal (H100; probe not run)"}


def _stub_open_clip(reason: str) -> None:
    """Let ``import msta_fast`` work without open_clip (the GPU machine lacks it): ViCLIP is msta_fast's own model
    and no step tokenizes text, so what msta_fast imports from open_clip at import time is replaced by names that
    raise when used."""

    def missing(name: str):
        def fail(*args, **kwargs):
            raise ImportError(f"{name} is not available: {reason}")

        return fail

    def module(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)

        def getattr_(attr: str):
            if attr.startswith("_"):
                raise AttributeError(attr)
            return missing(f"{name}.{attr}")

        mod.__getattr__ = getattr_
        return mod

    for name in ("open_clip", "open_clip.model", "open_clip.tokenizer"):
        sys.modules[name] = module(name)


def ensure_importable() -> str:
    """Make ``import msta_fast`` work here; returns how open_clip is provided."""
    if os.environ.get("MSTA_DEVICE_CHECK_NO_OPEN_CLIP") == "1":
        _stub_open_clip("MSTA_DEVICE_CHECK_NO_OPEN_CLIP=1 (the dry run proves no step needs it)")
        return "stubbed"
    if importlib.util.find_spec("open_clip") is None:
        _stub_open_clip("open_clip_torch is not installed (benchmarks/stage_wheels.sh stages it)")
        return "absent (stubbed)"
    return "installed"


OPEN_CLIP = ensure_importable()


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--results", type=Path, required=True, help="the run's results folder")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: proves the code")
    parser.add_argument("--jobs", type=int, default=None, help="processes for parallel compiles (default: CPUs, <= 12)")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if args.jobs is None:
        args.jobs = 2 if args.dry_run else max(1, min(12, os.cpu_count() or 1))
    return args


class Step:
    """One step's rows: ``record`` appends a JSON line at once (a step killed by its time limit keeps what it
    measured), to ``<results>/<name>.jsonl`` and, when ``$OUT`` is set, ``$OUT/device-check/<name>.jsonl``."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.dry = args.dry_run
        self.jobs = args.jobs
        self.results = args.results
        self.device = "cpu" if self.dry else "cuda"
        self.paths = [args.results / f"{name}.jsonl"]
        if os.environ.get("OUT"):
            out = Path(os.environ["OUT"]) / "device-check"
            out.mkdir(parents=True, exist_ok=True)
            self.paths.append(out / f"{name}.jsonl")
        self.started = time.perf_counter()
        if not self.dry:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit(f"{name}: no CUDA device (use --dry-run to prove the step on the CPU)")

    def record(self, **row) -> dict:
        row = {"step": self.name, **row}
        line = json.dumps(row, default=str)
        for path in self.paths:
            with open(path, "a") as f:
                f.write(line + "\n")
        print(line, flush=True)
        return row

    def headline(self, text: str) -> None:
        """The one line of this step in the summary table."""
        self.record(kind="headline", text=text)

    def skip(self, reason: str) -> None:
        self.record(kind="skipped", reason=reason)
        raise SystemExit(SKIPPED)

    def roofline(self) -> dict:
        """The probe step's measured bf16 matmul rate and memory bandwidth (nominal figures without it)."""
        path = self.results / "roofline.json"
        return json.loads(path.read_text()) if path.is_file() else dict(NOMINAL_ROOFLINE)

    def time_ms(self, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        """Median milliseconds per call of each function: CUDA events on a GPU, round-robin on the CPU."""
        from timing import gpu_ms, interleaved

        if self.dry:  # one call each proves the code; the interpreter is slow
            return {k: s * 1e3 for k, s in interleaved(fns, rounds=1, warmup=0).items()}
        return {k: gpu_ms(fn) for k, fn in fns.items()}

    def peak_mb(self, fn: Callable[[], object]) -> float | None:
        """Memory that one call of ``fn`` allocates beyond what was allocated before it (None on the CPU)."""
        if self.dry:
            return None
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_parallel(fn: Callable, items: list, jobs: int) -> list:
    """``fn(item)`` for every item in ``jobs`` fresh processes (spawned: CUDA is not fork-safe); each result, or
    the exception's text as ``{"error": ...}``. Used to compile in parallel: Triton's and Inductor's caches are on
    disk, so a later process that runs the same kernels only loads them."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    if jobs <= 1 or len(items) <= 1:
        return [_guarded(fn, item) for item in items]
    with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=get_context("spawn")) as pool:
        return list(pool.map(_guarded, [fn] * len(items), items))


def _guarded(fn: Callable, item):
    try:
        return fn(item)
    except Exception as err:  # noqa: BLE001 - one failed case is a row of the table, not the end of the step
        return {"error": f"{type(err).__name__}: {str(err)[:500]}"}


def compile_backend(dry: bool) -> str:
    """``torch.compile``'s backend as measured on a GPU (Inductor); in the dry run ``aot_eager``, which traces what
    Inductor would (Dynamo, AOT autograd: where a custom op or a graph break would fail) in seconds, not minutes."""
    return "aot_eager" if dry else "inductor"
