"""Adapters saved alone (safetensors + options) and loaded back, with clear errors on mismatch."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import msta_fast
from msta_fast.adapter_io import adapter_state_dict, read_adapter_metadata, read_adapters


def patched(method="msta", **kw):
    torch.manual_seed(0)
    model = msta_fast.build_viclip("viclip-tiny").eval()
    msta_fast.patch(model, method, **kw)
    for p in msta_fast.adapter_parameters(model).values():
        p.data.normal_(std=0.1)
    return model


@pytest.mark.parametrize("method, options", [("msta", dict(dim=8)), ("lora", dict(rank=8)),
                                             ("adaptformer", dict(dim=8)), ("full", {})])
def test_save_load_round_trip_into_a_fresh_model(tmp_path, method, options):
    model = patched(method, **options)
    path = msta_fast.save_adapters(model, tmp_path / "adapter_model.safetensors", extra={"classes": ["a b", "c"]})
    saved_method, config, tensors = read_adapters(path)
    assert saved_method == method and config == msta_fast.patching.patch_state(model).config
    assert set(tensors) == set(msta_fast.adapter_parameters(model))
    assert read_adapter_metadata(path)["classes"] == ["a b", "c"]
    torch.manual_seed(0)
    fresh = msta_fast.build_viclip("viclip-tiny").eval()  # the same backbone weights
    msta_fast.load_adapters(fresh, path)  # patches with the saved options
    x, texts = torch.randn(1, 8, 3, 32, 32), ["a b"]
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_video(x), model.encode_video(x), rtol=0, atol=0)
        torch.testing.assert_close(fresh.encode_text(texts), model.encode_text(texts), rtol=0, atol=0)
    assert msta_fast.trainable_parameters(fresh).trainable == msta_fast.trainable_parameters(model).trainable


def test_adapter_file_is_small_compared_with_the_model(tmp_path):
    model = patched(dim=16, start_layer=2)
    path = msta_fast.save_adapters(model, tmp_path / "a.safetensors")
    n_adapter = sum(p.numel() for p in msta_fast.adapter_parameters(model).values())
    assert path.stat().st_size < 4 * n_adapter + 100_000  # fp32 weights plus a small header
    assert n_adapter < 0.1 * sum(p.numel() for p in model.parameters())
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves nothing behind


def test_shared_layer_is_saved_once(tmp_path):
    model = patched(dim=8)
    _, _, tensors = read_adapters(msta_fast.save_adapters(model, tmp_path / "a.safetensors"))
    assert sum(k.startswith("msta_adapters.shared.") and k.endswith(".weight") for k in tensors) == 2


def test_mismatched_options_are_listed(tmp_path):
    path = msta_fast.save_adapters(patched(dim=8), tmp_path / "a.safetensors")
    other = msta_fast.build_viclip("viclip-tiny")
    msta_fast.patch(other, dim=16)
    with pytest.raises(ValueError, match="'dim': \\(16, 8\\)"):
        msta_fast.load_adapters(other, path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    path = msta_fast.save_adapters(patched(dim=8), tmp_path / "a.safetensors")
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors.pop("msta_adapters.vision.0.down.bias")
    tensors["msta_adapters.vision.9.down.bias"] = torch.zeros(8)
    save_file(tensors, tmp_path / "b.safetensors", metadata=meta)
    with pytest.raises(msta_fast.CheckpointMismatchError) as err:
        msta_fast.load_adapters(msta_fast.build_viclip("viclip-tiny"), tmp_path / "b.safetensors")
    assert err.value.missing == ["msta_adapters.vision.0.down.bias"]
    assert err.value.unexpected == ["msta_adapters.vision.9.down.bias"]


def test_foreign_file_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not an msta_fast adapter file"):
        msta_fast.load_adapters(msta_fast.build_viclip("viclip-tiny"), tmp_path / "other.safetensors")


# What the first adapter format held: one flat option dict (every method's options) for any method.
V1_OPTIONS = dict(dim=None, start_layer=1, scale=None, dropout=0.1, grad_scale=True, temporal_kernel=[3, 1, 1],
                  linear_init="kaiming", conv_init="zeros", share=True, towers=None, lora_targets=["q", "k", "v", "o"],
                  num_frames=8, pre_attn=False, text_layers=None, num_classes=None, head_dropout=0.5,
                  frame_adapter=True, zero_init_text=True, mlm_vocab=None)


@pytest.mark.parametrize("method, v1, options", [
    ("msta", dict(dim=8, scale=0.1, towers=["vision", "text"]), dict(dim=8, scale=0.1, num_frames=8)),
    ("lora", dict(dim=4, scale=1.0, towers=["vision"], lora_targets=["q", "v"]), dict(rank=4, targets=("q", "v"))),
])
def test_adapters_saved_in_the_first_format_still_load(tmp_path, method, v1, options):
    """Files written before each method had its own options: the options that apply are kept (LoRA's dim is its
    rank), the others, which never applied, are dropped."""
    model = patched(method, **options)
    tensors = adapter_state_dict(model)
    config = {**V1_OPTIONS, **v1, "method": method}
    save_file(tensors, tmp_path / "v1.safetensors", metadata={"format": "msta_fast.adapters/1",
                                                             "config": json.dumps(config)})
    torch.manual_seed(0)
    fresh = msta_fast.build_viclip("viclip-tiny").eval()
    msta_fast.load_adapters(fresh, tmp_path / "v1.safetensors")
    assert msta_fast.patching.patch_state(fresh).config == msta_fast.patching.patch_state(model).config
    x = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_video(x), model.encode_video(x), rtol=0, atol=0)


def test_bad_metadata_and_truncated_files_name_the_file(tmp_path):
    path = msta_fast.save_adapters(patched(dim=8), tmp_path / "a.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        msta_fast.load_adapters(msta_fast.build_viclip("viclip-tiny"), truncated)
    tensors = load_file(path)
    save_file(tensors, tmp_path / "bad.safetensors", metadata={"format": "msta_fast.adapters/2", "method": "msta",
                                                              "config": '{"dim": "eight"'})
    with pytest.raises(ValueError, match="bad.safetensors: metadata entry 'config' is not valid JSON"):
        msta_fast.load_adapters(msta_fast.build_viclip("viclip-tiny"), tmp_path / "bad.safetensors")
    save_file(tensors, tmp_path / "opts.safetensors", metadata={"format": "msta_fast.adapters/2", "method": "msta",
                                                               "config": '{"rank": 8}'})
    with pytest.raises(ValueError, match="opts.safetensors: the adapter options .* no option 'rank'"):
        msta_fast.load_adapters(msta_fast.build_viclip("viclip-tiny"), tmp_path / "opts.safetensors")


def test_adapters_on_another_backbone_name_what_differs(tmp_path):
    path = msta_fast.save_adapters(patched("lora", rank=4), tmp_path / "lora.safetensors")
    msta_fast.load_adapters(msta_fast.build_viclip("viclip-tiny"), path)  # the same architecture: loads
    other = msta_fast.build_viclip("viclip-tiny", text_layers=3)
    with pytest.raises(msta_fast.CheckpointMismatchError) as err:
        msta_fast.load_adapters(other, path)
    message = str(err.value)
    assert "saved on another backbone" in message and "architecture text_layers: file 2 vs model 3" in message
    assert "text_encoder.transformer.resblocks.2" in message  # the block the file's backbone lacked
