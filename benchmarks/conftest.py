"""Benchmark collection and result files for ``pytest benchmarks --benchmark-only``.

Files named ``bench_*.py`` are collected (the test suite's ``test_*.py`` rule does not cover them).
Measurements that a benchmark adds with the ``record_result`` fixture are written at the end of
the session to ``benchmarks/results/<kind>-<device>-<UTC time>.json`` and ``.md``, with the device,
date, commit and versions, so that runs on different machines can be compared.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton providers run in Triton's interpreter, which Triton chooses when it decorates
# a kernel: switched on here, before any benchmark module imports msta_fast (and with it triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# MSTA_FAST_BENCH_THREADS=1: one CPU thread; on shared, loaded cores two threads' timings vary by tens of percent
# (each op waits for its slower thread), one thread's hold their ratios.
if os.environ.get("MSTA_FAST_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["MSTA_FAST_BENCH_THREADS"]))

# MSTA_FAST_BENCH_RESULTS: another folder (the device check collects a run's files in its own)
RESULTS_DIR = Path(os.environ.get("MSTA_FAST_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
_records: list[dict] = []


def pytest_collect_file(file_path: Path, parent):
    # A file named on the command line is collected by pytest itself; do not collect it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def environment() -> dict:
    """Device, versions and commit of this run."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=False).stdout.strip() or None
    except OSError:
        commit = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, "
                                                               f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": commit,
    }


@pytest.fixture
def record_result():
    """``record_result(kind, **fields)``: one row of the results table for this session."""

    def record(kind: str, **fields) -> None:
        _records.append({"kind": kind, **fields})

    return record


def _markdown(env: dict, rows: list[dict]) -> str:
    lines = [f"# {rows[0]['kind']} benchmarks", ""] + [f"- {k}: {v}" for k, v in env.items()] + [""]
    keys = [k for k in rows[0] if k != "kind"]
    lines.append("| " + " | ".join(keys) + " |")
    lines.append("|" + " --- |" * len(keys))
    for row in rows:
        cells = [f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
    if not _records:
        return
    env = environment()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    device = "gpu-" + "".join(c if c.isalnum() else "_" for c in env["device"]) if torch.cuda.is_available() else "cpu"
    for kind in sorted({r["kind"] for r in _records}):
        rows = [r for r in _records if r["kind"] == kind]
        stem = RESULTS_DIR / f"{kind}-{device}-{stamp}"
        stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
        stem.with_suffix(".md").write_text(_markdown(env, rows))
