"""Static quality of the Triton kernels on sm_90 (H100 / H200), checked without a GPU.

``benchmarks/kernel_resources.py`` compiles every autotune config the ops can launch in bf16 at ViCLIP-B/16 and L/14
shapes (adapter dims 128 and 256) through Triton and ptxas and records registers, spills, shared memory and the
occupancy they allow; its table is committed (``benchmarks/results/kernel_resources_sm90.*``). Here: the table
matches the kernels' current search spaces and has no spill and no config that cannot launch, and the largest tile
of each kernel variant is compiled again (in a subprocess: this process runs Triton's interpreter).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script():
    spec = importlib.util.spec_from_file_location("kernel_resources", BENCHMARKS / "kernel_resources.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


kr = load_script()
REGENERATE = "regenerate it: python benchmarks/kernel_resources.py"


def committed_points() -> list:
    rows = json.loads(kr.TABLE_STEM.with_suffix(".json").read_text())["rows"]
    return [kr.Point(**{k: v for k, v in row.items() if k != "key"}) for row in rows]


def test_committed_table_covers_exactly_the_configs_the_ops_can_launch():
    committed = {p.key for p in committed_points()}
    current = {p.key for p in kr.launch_space()}
    assert current == committed, (f"the kernels' search spaces changed since the table was generated ({REGENERATE}); "
                                  f"new: {sorted(current - committed)}; gone: {sorted(committed - current)}")


def test_committed_table_has_no_spill_and_every_config_launches():
    assert kr.problems(committed_points()) == []
    assert kr.TABLE_STEM.with_suffix(".md").is_file(), REGENERATE


def test_occupancy_follows_the_sm90_limits():
    # 128 registers x 32 lanes = 4,096 per warp: 16 warps fit the 65,536-register file, so 4 blocks of 4 warps.
    occ = kr.occupancy(128, 0, 4)
    assert (occ["blocks_per_sm"], occ["warps_per_sm"], occ["limiter"], occ["launchable"]) == (4, 16, "registers", True)
    # registers are allocated per warp in units of 256: 255 per thread take 8,192 per warp
    assert kr.occupancy(255, 0, 8)["blocks_per_sm"] == 1
    # 100 KiB of shared memory (+1 KiB reserved per block): two blocks
    occ = kr.occupancy(32, 100 * 1024, 4)
    assert (occ["blocks_per_sm"], occ["limiter"]) == (2, "shared memory")
    # over 227 KiB per block, or 1,024 threads per block: cannot launch
    assert not kr.occupancy(32, 240 * 1024, 4)["launchable"]
    assert not kr.occupancy(32, 0, 64)["launchable"]


def test_ptxas_report_is_parsed():
    log = ("ptxas info    : Compiling entry function '_k' for 'sm_90a'\n"
           "ptxas info    : Function properties for _k\n"
           "    16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads\n"
           "ptxas info    : Used 168 registers, used 1 barriers, 512 bytes smem, 400 bytes cmem[0]\n")
    assert kr.parse_ptxas(log) == dict(regs=168, stack=16, spill_stores=12, spill_loads=20, static_smem=512)
    with pytest.raises(RuntimeError, match="no register count"):
        kr.parse_ptxas("ptxas info : nothing")


def test_largest_tiles_compile_for_sm90_without_spilling(tmp_path):
    """The first configs to spill (largest tile at the largest dim, per kernel variant), compiled now."""
    out = tmp_path / "ci.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / "kernel_resources.py"), "--subset", "ci", "--json",
                             str(out), "--jobs", "2"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["kernel"], r["variant"]) for r in rows} == {(v.kernel, v.name) for v in kr.variants()} | {
        ("_dropout_keep_kernel", "mask")}
    assert all(r["result"]["regs"] > 0 and r["result"]["launchable"] for r in rows)
