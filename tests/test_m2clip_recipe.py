"""``recipes/train.py --methods m2clip``: a tiny base-to-novel run end to end on the synthetic data set."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import msta_fast
from msta_fast.training.methods import get_method, list_methods

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_train_recipe():
    spec = importlib.util.spec_from_file_location("train_recipe", REPO_ROOT / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_m2clip_is_registered():
    assert "m2clip" in list_methods()
    method = get_method("m2clip")
    assert method.trains and not method.uses_descriptions({"loss": {"consistency": True, "weight": 1.0}})


def test_tiny_base_to_novel_run(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "viclip.pth"
    torch.save({"model": msta_fast.build_viclip("viclip-tiny", num_frames=4).state_dict()}, checkpoint)
    out = tmp_path / "run"
    results = load_train_recipe().main([
        "--setting", "b2n", "--methods", "m2clip", "--checkpoint", str(checkpoint), "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"),
        "--set", "protocol.seeds=[1]", "--set", "optim.epochs=1", "--set", "model.num_frames=4",
        "--set", "synthetic.train_per_class=16", "--set", "synthetic.val_per_class=2", "--set", "debug.max_videos=24",
        "--set", "synthetic.frames=4", "--set", "eval.select_best=last", "--set", "data.num_workers=0",
        "--set", "method_overrides={m2clip: {adapter: {options: {dim: 16}}}}",
    ])
    entry = results["methods"]["m2clip"]
    assert 0 <= entry["base"] <= 100 and 0 <= entry["novel"] <= 100
    done = json.loads((out / "m2clip" / "seed1" / "done.json").read_text())
    # The visual head is scored on the training (base) classes only: it has no output for novel ones.
    assert 0 <= done["evals"]["base"]["visual_head"]["top1"] <= 100
    assert "visual_head" not in done["evals"]["novel"]
    assert done["trainable_parameters"] == results["trainable_parameters"]["m2clip"] > 0
    saved, tensors = msta_fast.adapters.read_adapters(out / "m2clip" / "seed1" / "adapters.safetensors")
    assert saved.method == "m2clip" and saved.dim == 16 and saved.num_classes == 12
    assert any(k.startswith("m2clip_adapters.decoder.") for k in tensors)


@pytest.mark.parametrize("option", ["visual_ce", "mlm"])
def test_head_switches_reach_the_patch(option):
    method = get_method("m2clip")
    cfg = {"adapter": {"options": {option: False, "mask_prob": 0.3}}, "model": {"num_frames": 4}}
    options, heads, mask_prob = method.split_options(cfg)
    assert getattr(heads, option) is False and mask_prob == 0.3
    assert options == {"num_frames": 4}
