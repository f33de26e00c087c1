"""``torchrun --nproc_per_node 2`` with gloo on the CPU: FSDP2 (fully_shard) runs the same recipe and, with
dropout off and the same global batch, trains the same adapters and scores the same as one process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_recipes_end_to_end import REPO, load_recipe, tiny_args

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not TORCHRUN.exists(),
                                reason="torchrun is not installed")


def test_fsdp2_on_two_cpu_processes_matches_one_process(tmp_path_factory, tmp_path):
    cache = tmp_path_factory.getbasetemp() / "recipes_cache"
    extra = ["--methods", "zero,msta", "--set", "adapter.dropout=0.0", "--set", "optim.micro_batch_size=4",
             "--set", "optim.epochs=2"]
    single = tmp_path / "single"
    load_recipe("train").main(["--setting", "b2n", *tiny_args(cache, single), *extra])  # also fills the cache
    dist = tmp_path / "fsdp"
    cmd = [str(TORCHRUN) if TORCHRUN.exists() else "torchrun", "--nproc_per_node", "2", "--master_port", "29517",
           str(REPO / "recipes" / "train.py"), "--setting", "b2n", *tiny_args(cache, dist), *extra,
           "--set", "distributed.strategy=fsdp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((single / "results.json").read_text())["methods"]
    two = json.loads((dist / "results.json").read_text())["methods"]
    # zero-shot: the same videos scored exactly once each, sharded over 2 ranks
    assert two["zero"] == one["zero"]
    a = load_file(single / "msta" / "seed1" / "adapters.safetensors")
    b = load_file(dist / "msta" / "seed1" / "adapters.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    for k in ("base", "novel"):
        assert abs(two["msta"][k] - one["msta"][k]) < 1e-6
