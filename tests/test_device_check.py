"""The GPU check, ``benchmarks/device_check.sh``, proven on the CPU: its ``--dry-run`` runs every step's code at tiny
shapes (Triton's interpreter, the C++ CPU op) with open_clip replaced by a stub, as on the GPU machine that lacks
it. Also the driver's own rules, with a stand-in Python: a failed step is recorded and the next one runs, and
``--budget`` skips what would not fit."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "device_check.sh"
STEPS = ["setup", "probe", "parity", "layer", "e2e", "token_conv", "extension", "decoding"]


def run_check(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    # no staged wheels: a test must not install anything
    env = {**os.environ, "PYTHON": sys.executable, "WHEEL_DIRS": "/nonexistent", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def steps_table(results: Path) -> dict[str, list[str]]:
    rows = [line.split("\t") for line in (results / "steps.tsv").read_text().splitlines()]
    return {row[0]: row[1:] for row in rows}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("device-check")
    out = tmp_path_factory.mktemp("out")
    proc = run_check("--dry-run", "--results", str(results), env={"OUT": str(out)})
    return proc, results, out


def test_dry_run_runs_every_step(dry_run):
    proc, results, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = steps_table(results)
    assert list(table) == STEPS
    assert {name: row[0] for name, row in table.items()} == dict.fromkeys(STEPS, "ok")
    summary = (results / "summary.md").read_text()
    assert summary.startswith("# Device check (dry run")
    for name in STEPS:
        assert f"| {name} | ok |" in summary


def test_dry_run_steps_need_no_open_clip(dry_run):
    _, results, _ = dry_run
    env = next(json.loads(line) for line in (results / "probe.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "environment")
    assert env["open_clip"] == "stubbed"


def test_dry_run_checks_every_op_in_both_dtypes_within_bounds(dry_run):
    _, results, _ = dry_run
    for step, provider in (("parity", "triton"), ("extension", "ext")):
        rows = [json.loads(line) for line in (results / f"{step}.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["kind"] == "parity"]
        assert {(r["op"], r["dtype"]) for r in rows} == {
            (op, dt) for op in ("video-viclip-k311", "video-frames-k311", "video-viclip-k333", "text", "token-k311",
                                "token-k133") for dt in ("float16", "float32")}
        assert all(r["ok"] and r["provider"] == provider for r in rows), [r for r in rows if not r["ok"]]


def test_dry_run_measures_every_provider(dry_run):
    _, results, _ = dry_run
    layer = [json.loads(line) for line in (results / "layer.jsonl").read_text().splitlines()]
    got = {(r["case"].split("-")[0], r["phase"], r["provider"]) for r in layer if r["kind"] == "layer"}
    assert got == {(t, ph, p) for t in ("video", "text") for ph in ("fwd", "fwd+bwd")
                   for p in ("eager", "compile", "triton")}
    e2e = [json.loads(line) for line in (results / "e2e.jsonl").read_text().splitlines()]
    assert [r["backend"] for r in e2e if r["kind"] == "e2e"] == ["frozen-backbone", "torch", "triton"]


def test_dry_run_mirrors_results_to_out(dry_run):
    _, results, out = dry_run
    mirrored = out / "device-check"
    assert (mirrored / "summary.md").read_text() == (results / "summary.md").read_text()
    for name in STEPS[1:]:
        assert (mirrored / f"{name}.jsonl").is_file(), name


@pytest.fixture
def stand_in_python(tmp_path):
    """A Python that fails the probe step, lists which steps ran and passes everything else to the real one."""
    calls = tmp_path / "calls"
    stub = tmp_path / "python"
    stub.write_text(f"""#!/usr/bin/env bash
case "$1" in
  *device/summary.py) exec {sys.executable} "$@" ;;
  *device/*.py) basename "$1" .py >> {calls} ;;
esac
case "$1" in
  *device/probe.py) echo "probe: no device" >&2; exit 1 ;;
  *device/*.py) exit 0 ;;
esac
exec {sys.executable} "$@"
""")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return stub, calls


def test_failed_step_is_recorded_and_the_next_one_runs(stand_in_python, tmp_path):
    stub, calls = stand_in_python
    results = tmp_path / "results"
    proc = run_check("--results", str(results), env={"PYTHON": str(stub)}, timeout=120)
    assert proc.returncode == 1  # a step failed
    table = steps_table(results)
    assert table["probe"][0] == "failed" and "probe: no device" in table["probe"][3]
    assert all(table[name][0] == "ok" for name in STEPS[2:])
    assert calls.read_text().split() == STEPS[1:]
    assert "| probe | FAILED |" in (results / "summary.md").read_text()


def test_budget_skips_what_would_not_fit(stand_in_python, tmp_path):
    stub, calls = stand_in_python
    results = tmp_path / "results"
    proc = run_check("--results", str(results), "--budget", "60", "--only", "parity layer", env={"PYTHON": str(stub)},
                     timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = steps_table(results)
    # 60 s minus the summary's reserve leaves room for neither step's usual time (90 s, 150 s)
    assert table["parity"][0] == "skipped" and "would not fit" in table["parity"][3]
    assert table["probe"][0] == "skipped" and "not selected" in table["probe"][3]
    assert not calls.exists()


def test_scripts_parse():
    for script in ("device_check.sh", "stage_wheels.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / script)]).returncode == 0, script
