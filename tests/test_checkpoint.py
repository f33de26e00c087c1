"""Loading ViCLIP checkpoints in every published form: strict keys, safe unpickling, readable errors."""

import argparse
import logging
import pickle
import sys

import pytest
import torch
from safetensors.torch import save_file

import msta_fast
from msta_fast.models import UnsafeCheckpointError


@pytest.fixture
def model():
    m = msta_fast.build_viclip("viclip-tiny").eval()
    with torch.no_grad():
        m.vision_encoder.temporal_positional_embedding.normal_()
    return m


def _outputs(m, frames=8):
    torch.manual_seed(1)
    with torch.no_grad():
        return m.encode_video(torch.randn(2, frames, 3, 32, 32)), m.encode_text(["a video of x.", "b"])


def _assert_same_function(a, b):
    for x, y in zip(_outputs(a), _outputs(b), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("form", ["official", "bare", "module_prefix", "state_dict_key", "safetensors"])
def test_round_trip_every_accepted_format(tmp_path, model, form):
    sd = model.state_dict()
    if form == "official":
        path = tmp_path / "ViClip-InternVid-10M-FLT.pth"
        torch.save({"model": sd, "epoch": 3}, path)
    elif form == "bare":
        path = tmp_path / "bare.pth"
        torch.save(sd, path)
    elif form == "module_prefix":
        path = tmp_path / "ddp.pth"
        torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    elif form == "state_dict_key":
        path = tmp_path / "wrapped.pt"
        torch.save({"state_dict": sd}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    loaded = msta_fast.load_viclip(path).eval()
    assert loaded.config == model.config
    _assert_same_function(loaded, model)


def test_key_mismatch_lists_missing_and_unexpected(tmp_path, model):
    sd = model.state_dict()
    del sd["vision_encoder.ln_post.bias"]
    sd["vision_encoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(msta_fast.CheckpointMismatchError) as err:
        msta_fast.load_viclip(path)
    assert err.value.missing == ["vision_encoder.ln_post.bias"]
    assert err.value.unexpected == ["vision_encoder.extra_head.weight"]
    assert "bad.pth" in str(err.value) and "vision_encoder.ln_post.bias" in str(err.value)


def test_missing_architecture_key_is_named(tmp_path, model):
    sd = model.state_dict()
    del sd["vision_encoder.proj"]
    torch.save(sd, tmp_path / "noproj.pth")
    with pytest.raises(msta_fast.CheckpointMismatchError, match="vision_encoder.proj"):
        msta_fast.load_viclip(tmp_path / "noproj.pth")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        msta_fast.load_viclip(tmp_path / "nope.pth")


# ------------------------------------------------------------------------------------ pickled objects


def test_code_in_a_pickle_is_refused_and_never_run(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload()}, f, protocol=2)  # torch.save's protocol
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True") as err:
        msta_fast.load_viclip(path)
    message = str(err.value)
    assert "evil.pth" in message and "trust_pickle=True" in message
    assert "(the first one: print)" in message  # torch names a builtin without its module
    assert "this must not run" not in capsys.readouterr().out


def test_training_checkpoint_with_a_pickled_config_needs_trust(tmp_path, model):
    """InternVideo's training code saves {"model", "optimizer", "config", "epoch", ...} with a config object."""
    path = tmp_path / "ckpt_04.pth"
    config = argparse.Namespace(model={"vision_encoder": {"name": "vit_b16"}}, max_txt_l=32)
    torch.save({"model": model.state_dict(), "config": config, "epoch": 4, "global_step": 100}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        msta_fast.load_viclip(path)
    message = str(err.value)
    assert "ckpt_04.pth" in message and "argparse.Namespace" in message and "trust_pickle=True" in message
    _assert_same_function(msta_fast.load_viclip(path, trust_pickle=True).eval(), model)


def test_trusted_pickle_whose_classes_cannot_be_imported(tmp_path, model, monkeypatch, caplog):
    """The official config class (``utils.easydict.EasyDict``) is not importable where the file is loaded."""
    package = tmp_path / "internvideo_utils"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "easydict.py").write_text(
        "class EasyDict(dict):\n"
        "    def __setattr__(self, name, value):\n"
        "        super().__setattr__(name, value)\n"
        "        self[name] = value\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from internvideo_utils.easydict import EasyDict

    config = EasyDict()
    config.model = EasyDict()
    config.model.temp = 0.07
    path = tmp_path / "ckpt_best.pth"
    torch.save({"model": model.state_dict(), "config": config, "epoch": 9}, path)
    for name in ("internvideo_utils", "internvideo_utils.easydict"):
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])

    with pytest.raises(UnsafeCheckpointError, match="internvideo_utils.easydict.EasyDict"):
        msta_fast.load_viclip(path)
    with caplog.at_level(logging.WARNING, logger="msta_fast.models.checkpoint"):
        loaded = msta_fast.load_viclip(path, trust_pickle=True).eval()
    assert "internvideo_utils.easydict.EasyDict cannot be imported" in caplog.text
    _assert_same_function(loaded, model)


# ----------------------------------------------------------------------------- truncated / corrupt files


@pytest.mark.parametrize("name", ["model.safetensors", "zip.pth", "legacy.pth", "empty.pth"])
def test_truncated_or_corrupt_file_is_named(tmp_path, model, name):
    path = tmp_path / name
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if name == "model.safetensors":
        save_file(sd, path)
    elif name != "empty.pth":
        torch.save({"model": sd}, path, _use_new_zipfile_serialization=name == "zip.pth")
    data = path.read_bytes() if path.exists() else b""
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        msta_fast.load_viclip(path)
    assert str(path) in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no library traceback above ours


# ------------------------------------------------------------------------------------- -hf safetensors


def test_hf_release_layout(tmp_path, model):
    """The -hf releases' model.safetensors is read by their own code into InternVideo's ViCLIP module with
    load_state_dict, so its tensors carry the official names with no prefix: it loads as is."""
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path, metadata={"format": "pt"})
    loaded = msta_fast.load_viclip(path)
    assert loaded.config == model.config
    _assert_same_function(loaded.eval(), model)


def test_tensors_viclip_does_not_have_are_refused_then_dropped_on_request(tmp_path, model, caplog):
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    # A file with tensors that are not ViCLIP weights: causal masks kept per text block, a projection bias.
    masks = {f"text_encoder.transformer.resblocks.{i}.attn_mask": torch.full((32, 32), -1e4).triu(1) for i in (0, 1)}
    extra = {**masks, "text_encoder.text_projection_bias": torch.zeros(64)}
    path = tmp_path / "model.safetensors"
    save_file({**sd, **extra}, path)

    with pytest.raises(msta_fast.CheckpointMismatchError) as err:
        msta_fast.load_viclip(path)
    assert err.value.unexpected == sorted(extra) and not err.value.missing
    message = str(err.value)
    assert "3 tensors (2,112 values) that ViCLIP does not have" in message
    assert "text_encoder.transformer.resblocks.0.attn_mask (32, 32)" in message and "ignore_keys" in message

    patterns = ["text_encoder.transformer.resblocks.*.attn_mask", "text_encoder.text_projection_bias"]
    with caplog.at_level(logging.INFO, logger="msta_fast.models.checkpoint"):
        loaded = msta_fast.load_viclip(path, ignore_keys=patterns).eval()
    assert "dropping 3 tensors" in caplog.text and all(k in caplog.text for k in extra)
    _assert_same_function(loaded, model)

    with pytest.raises(ValueError, match="'text_encoder.typo' matches no tensor"):
        msta_fast.load_viclip(path, ignore_keys=["text_encoder.typo"])
    with pytest.raises(msta_fast.CheckpointMismatchError, match="missing keys: vision_encoder.proj"):
        msta_fast.load_viclip(path, ignore_keys=[*patterns, "vision_encoder.proj"])


def test_a_model_msta_fast_saved_reloads_with_its_heads(tmp_path):
    """The head count is not in the shapes: a checkpoint msta_fast writes carries it, and load_viclip builds those
    heads without overrides (an explicit override still wins)."""
    import dataclasses

    model = msta_fast.build_viclip("viclip-tiny", vision_heads=4, text_heads=2).eval()
    bare, described = tmp_path / "bare.pth", tmp_path / "described.pth"
    torch.save({"model": model.state_dict()}, bare)
    torch.save({"model": model.state_dict(), "architecture": dataclasses.asdict(model.config)}, described)
    assert msta_fast.load_viclip(bare).config.vision_heads == 1  # width / 64: a different model
    loaded = msta_fast.load_viclip(described).eval()
    assert (loaded.config.vision_heads, loaded.config.text_heads) == (4, 2)
    x = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_video(x), model.encode_video(x))
    assert msta_fast.load_viclip(described, vision_heads=2).config.vision_heads == 2
