"""Shapes that contradict each other are refused; shapes that allow another reading load with a warning
naming the preset they resemble and the override that settles it; nothing loads as a silently different model."""

import warnings

import pytest
import torch

import msta_fast
from msta_fast.models import AmbiguousCheckpointWarning, CheckpointMismatchError
from msta_fast.models.checkpoint import infer_config

BLOCK = "vision_encoder.transformer.resblocks"


def _save(tmp_path, sd, name="m.pth"):
    path = tmp_path / name
    torch.save({"model": sd}, path)
    return path


def _load_without_warnings(path, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousCheckpointWarning)
        return msta_fast.load_viclip(path, **overrides)


def _renumbered(sd, tower, mapping):
    """Block ``i`` of ``tower`` renamed to block ``mapping[i]``, the others dropped."""
    prefix = f"{tower}.transformer.resblocks."
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            out[k] = v
            continue
        index, rest = k[len(prefix) :].split(".", 1)
        if int(index) in mapping:
            out[f"{prefix}{mapping[int(index)]}.{rest}"] = v
    return out


def test_preset_shapes_load_without_warnings(tmp_path):
    sd = msta_fast.build_viclip("viclip-tiny").state_dict()
    assert _load_without_warnings(_save(tmp_path, sd)).config == msta_fast.build_viclip("viclip-tiny").config


def test_a_gap_in_the_block_indices_is_an_error(tmp_path):
    """Blocks 0-2 and 4 of a 5-block tower: not a 4-block model, and not a 5-block one."""
    sd = msta_fast.build_viclip("viclip-tiny", vision_layers=5).state_dict()
    path = _save(tmp_path, _renumbered(sd, "vision_encoder", {0: 0, 1: 1, 2: 2, 4: 4}), "gap.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        msta_fast.load_viclip(path, vision_layers=5)
    assert "gap.pth" in str(err.value)
    assert "vision_encoder holds blocks 0-2, 4 but not 3" in str(err.value)


def test_blocks_that_do_not_start_at_zero_are_an_error(tmp_path):
    sd = msta_fast.build_viclip("viclip-tiny").state_dict()
    path = _save(tmp_path, _renumbered(sd, "text_encoder", {0: 1, 1: 2}))
    with pytest.raises(CheckpointMismatchError, match="text_encoder holds blocks 1-2 but not 0"):
        msta_fast.load_viclip(path)


def test_a_missing_last_block_warns_and_names_the_preset():
    """11 of viclip-b16's 12 vision blocks (built on the meta device: shapes are all the check reads)."""
    with torch.device("meta"):
        sd = msta_fast.build_viclip("viclip-b16").state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith(f"{BLOCK}.11.")}
    with pytest.warns(AmbiguousCheckpointWarning) as record:
        cfg = infer_config(sd, "b16-11.pth")
    message = str(record[0].message)
    assert "b16-11.pth" in message and "resemble viclip-b16" in message
    assert "vision tower has 11 blocks where viclip-b16 has 12" in message and "pass vision_layers=11" in message
    assert cfg.vision_layers == 11
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousCheckpointWarning)
        assert infer_config(sd, "b16-11.pth", vision_layers=11).vision_layers == 11


def test_a_depth_no_preset_has_loads_after_the_warning_and_is_silenced_by_the_override(tmp_path):
    model = msta_fast.build_viclip("viclip-tiny", text_layers=3).eval()
    path = _save(tmp_path, model.state_dict())
    with pytest.warns(AmbiguousCheckpointWarning, match="pass text_layers=3"):
        loaded = msta_fast.load_viclip(path)
    assert loaded.config == model.config
    assert _load_without_warnings(path, text_layers=3).config == model.config
    # An override that contradicts the shapes is not a way to get a shallower model either.
    with pytest.raises(CheckpointMismatchError, match="unexpected keys: text_encoder.transformer.resblocks.2"):
        msta_fast.load_viclip(path, text_layers=2)


def test_a_width_no_preset_has_warns_that_the_heads_are_a_guess(tmp_path):
    model = msta_fast.build_viclip("viclip-tiny", vision_width=96, vision_heads=3).eval()
    path = _save(tmp_path, model.state_dict())
    with pytest.warns(AmbiguousCheckpointWarning) as record:
        guessed = msta_fast.load_viclip(path)
    message = str(record[0].message)
    assert "vision width 96 is no preset's" in message and "width / 64 = 1" in message
    assert "pass vision_heads=" in message and "resemble viclip-tiny" in message
    assert guessed.config.vision_heads == 1  # loads, but not as the model that was saved ...
    video = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(guessed.eval().encode_video(video), model.encode_video(video))
        right = _load_without_warnings(path, vision_heads=3).eval()  # ... until the heads are given
        torch.testing.assert_close(right.encode_video(video), model.encode_video(video), rtol=0, atol=0)


def test_tensors_of_one_tower_that_disagree_on_its_width_are_an_error(tmp_path):
    sd = msta_fast.build_viclip("viclip-tiny").state_dict()
    sd["vision_encoder.ln_post.weight"] = torch.ones(80)
    sd["vision_encoder.ln_post.bias"] = torch.zeros(80)
    with pytest.raises(CheckpointMismatchError) as err:
        msta_fast.load_viclip(_save(tmp_path, sd))
    assert "the tensors disagree on the vision tower width" in str(err.value)
    assert "vision_encoder.conv1.weight 64" in str(err.value) and "vision_encoder.ln_post.weight 80" in str(err.value)


def test_towers_that_disagree_on_the_embedding_size_are_an_error(tmp_path):
    sd = msta_fast.build_viclip("viclip-tiny").state_dict()
    sd["text_encoder.text_projection"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointMismatchError) as err:
        msta_fast.load_viclip(_save(tmp_path, sd, "towers.pth"))
    message = str(err.value)
    assert "towers.pth" in message and "the tensors disagree on the joint embedding size" in message
    assert "vision_encoder.proj 64" in message and "text_encoder.text_projection 32" in message


def test_a_block_of_another_width_is_a_shape_mismatch(tmp_path):
    sd = msta_fast.build_viclip("viclip-tiny").state_dict()
    sd[f"{BLOCK}.1.mlp.c_fc.weight"] = torch.zeros(128, 64)
    with pytest.raises(CheckpointMismatchError) as err:
        msta_fast.load_viclip(_save(tmp_path, sd))
    assert err.value.shapes == [f"{BLOCK}.1.mlp.c_fc.weight: checkpoint (128, 64) vs model (256, 64)"]
