"""``recipes/train.py --methods m2clip``: a tiny base-to-novel run end to end on the synthetic data set."""

import json

import pytest
import torch
from test_recipes_end_to_end import load_recipe

import msta_fast
from msta_fast.methods import get_method, list_methods
from msta_fast.methods.m2clip import M2CLIPConfig, M2CLIPLossOptions
from msta_fast.training.config import ConfigError, build_config, method_options


def test_m2clip_is_registered():
    assert "m2clip" in list_methods()
    method = get_method("m2clip")
    assert method.trains and not method.wants_descriptions(M2CLIPLossOptions())


def test_tiny_base_to_novel_run(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "viclip.pth"
    torch.save({"model": msta_fast.build_viclip("viclip-tiny", num_frames=4).state_dict()}, checkpoint)
    out = tmp_path / "run"
    results = load_recipe("train").main([
        "--setting", "b2n", "--methods", "m2clip", "--checkpoint", str(checkpoint), "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"),
        "--set", "protocol.seeds=[1]", "--set", "optim.epochs=1", "--set", "model.num_frames=4",
        "--set", "synthetic.train_per_class=16", "--set", "synthetic.val_per_class=2", "--set", "debug.max_videos=24",
        "--set", "synthetic.frames=4", "--set", "eval.select_best=last", "--set", "data.num_workers=0",
        "--set", "adapter.m2clip.dim=16",
    ])
    entry = results["methods"]["m2clip"]
    assert 0 <= entry["base"] <= 100 and 0 <= entry["novel"] <= 100
    done = json.loads((out / "m2clip" / "seed1" / "done.json").read_text())
    # The visual head is scored on the training (base) classes only: it has no output for novel ones.
    assert 0 <= done["evals"]["base"]["visual_head"]["top1"] <= 100
    assert "visual_head" not in done["evals"]["novel"]
    assert done["trainable_parameters"] == results["trainable_parameters"]["m2clip"] > 0
    method, saved, tensors = msta_fast.read_adapters(out / "m2clip" / "seed1" / "adapters.safetensors")
    assert method == "m2clip" and saved.dim == 16 and saved.num_classes == 12
    assert any(k.startswith("m2clip_adapters.decoder.") for k in tensors)


@pytest.mark.parametrize("option", ["visual_ce", "mlm"])
def test_head_switches_reach_the_patch(option):
    """loss.m2clip switches a head off; the job's patch then has no such head."""
    cfg = build_config(None, overrides=["methods=[m2clip]", f"loss.m2clip.{option}=false", "loss.m2clip.mask_prob=0.3"])
    spec, config, heads = method_options(cfg, "m2clip")
    assert getattr(heads, option) is False and heads.mask_prob == 0.3
    sized = spec.for_classes(config, ["a b", "c"], heads)
    assert (sized.num_classes is None) == (option == "visual_ce") and (sized.mlm_vocab is None) == (option == "mlm")
    assert isinstance(sized, M2CLIPConfig)
    with pytest.raises(ConfigError, match="every head of the M2-CLIP decoder is switched off"):
        method_options(build_config(None, overrides=["methods=[m2clip]", "loss.m2clip={contrastive: false, "
                                                     "text_ce: false, visual_ce: false, mlm: false}"]), "m2clip")
