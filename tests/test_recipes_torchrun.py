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
    extra = ["--methods", "zero,msta", "--set", "adapter.msta.dropout=0.0", "--set", "optim.micro_batch_size=4",
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


def torchrun(out: Path, cache: Path, port: int, *extra: str) -> None:
    cmd = [str(TORCHRUN) if TORCHRUN.exists() else "torchrun", "--nproc_per_node", "2", "--master_port", str(port),
           str(REPO / "recipes" / "train.py"), "--setting", "b2n", *tiny_args(cache, out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


M2CLIP_OPTIONS = ["--methods", "m2clip", "--set", "adapter.m2clip.dim=16"]


@pytest.fixture(scope="module")
def m2clip_single_process(tmp_path_factory):
    """M2-CLIP in one process with every head and its dropout, the global batch of 8 in one forward (the
    contrastive head is batch-wide: it must see what the two processes see together)."""
    cache = tmp_path_factory.getbasetemp() / "recipes_cache"
    out = tmp_path_factory.mktemp("m2clip_single")
    load_recipe("train").main(["--setting", "b2n", *tiny_args(cache, out), *M2CLIP_OPTIONS])
    return out


@pytest.mark.parametrize("strategy, port", [("fsdp", 29521), ("ddp", 29523)])
def test_m2clip_on_two_cpu_processes_matches_one_process(m2clip_single_process, tmp_path_factory, tmp_path,
                                                          strategy, port):
    """M2-CLIP's heads run inside the wrapped forward, its contrastive head on the gathered global batch, its MLM
    masks and head dropout from the items' seeds, its decoder pass as an FSDP2 forward method of the last text
    block: sharded (FSDP2) or replicated (DDP) training gives the adapters, the decoder, the visual head and the
    scores of one process."""
    cache = tmp_path_factory.getbasetemp() / "recipes_cache"
    torchrun(tmp_path, cache, port, *M2CLIP_OPTIONS, "--set", "optim.micro_batch_size=4",
             "--set", f"distributed.strategy={strategy}")
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s["mlm"] > 0 for s in steps if s["tag"].startswith("train/")] == [True] * 3
    a = load_file(m2clip_single_process / "m2clip" / "seed1" / "adapters.safetensors")
    b = load_file(tmp_path / "m2clip" / "seed1" / "adapters.safetensors")
    assert a.keys() == b.keys()
    assert any(k.startswith("m2clip_adapters.head.") for k in a) and any(".decoder." in k for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    one = json.loads((m2clip_single_process / "m2clip" / "seed1" / "done.json").read_text())["evals"]
    two = json.loads((tmp_path / "m2clip" / "seed1" / "done.json").read_text())["evals"]
    for split in ("base", "novel"):
        assert abs(two[split]["top1"] - one[split]["top1"]) < 1e-6
    assert abs(two["base"]["visual_head"]["top1"] - one["base"]["visual_head"]["top1"]) < 1e-6


GATHER_SCRIPT = """
import torch, torch.distributed as dist
from msta_fast.collectives import gather_batch
dist.init_process_group("gloo")
rank = dist.get_rank()
rows = 3 if rank == 0 else 5  # uneven: the last batch of an epoch may be
x = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 2).add(100 * rank).requires_grad_()
labels = torch.full((rows,), rank)
everything, all_labels = gather_batch(x, labels)
assert everything.shape == (8, 2) and all_labels.tolist() == [0] * 3 + [1] * 5
assert torch.equal(everything[:3].detach(), torch.arange(6.0).reshape(3, 2))
assert torch.equal(everything[3:].detach(), torch.arange(10.0).reshape(5, 2) + 100)
# every rank computes the same loss on the gathered batch: each rank's rows get the sum of the ranks' gradients
weights = torch.arange(16, dtype=torch.float32).reshape(8, 2)
(everything * weights).sum().backward()
mine = weights[:3] if rank == 0 else weights[3:]
assert torch.equal(x.grad, 2 * mine), (x.grad, mine)
dist.destroy_process_group()
"""


def test_gather_batch_with_uneven_ranks(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    cmd = [str(TORCHRUN) if TORCHRUN.exists() else "torchrun", "--nproc_per_node", "2", "--master_port", "29527",
           str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
