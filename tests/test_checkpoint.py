"""Loading ViCLIP checkpoints in every published form, with strict keys and frame-count interpolation."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

import msta_fast
from msta_fast.models.checkpoint import resize_temporal_embedding


@pytest.fixture
def model():
    m = msta_fast.build_viclip("viclip-tiny", vision_layers=3).eval()
    with torch.no_grad():
        m.vision_encoder.temporal_positional_embedding.normal_()
    return m


def _outputs(m, frames=8):
    torch.manual_seed(1)
    with torch.no_grad():
        return m.encode_video(torch.randn(2, frames, 3, 32, 32)), m.encode_text(["a video of x.", "b"])


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
    for a, b in zip(_outputs(loaded), _outputs(model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


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


def test_untrusted_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(ValueError, match="weights_only=True"):
        msta_fast.load_viclip(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        msta_fast.load_viclip(tmp_path / "nope.pth")


def test_frame_count_interpolation(tmp_path, model):
    torch.save({"model": model.state_dict()}, tmp_path / "m.pth")
    four = msta_fast.load_viclip(tmp_path / "m.pth", num_frames=4).eval()
    emb8 = model.vision_encoder.temporal_positional_embedding
    emb4 = four.vision_encoder.temporal_positional_embedding
    assert emb4.shape == (1, 4, 64)
    # Linear interpolation with half-pixel centres: new frame i sits at 2i + 0.5 of the old ones.
    torch.testing.assert_close(emb4[0, 1], 0.5 * (emb8[0, 2] + emb8[0, 3]))
    assert four.encode_video(torch.randn(1, 4, 3, 32, 32)).shape == (1, 64)
    sixteen = resize_temporal_embedding(torch.ones(1, 8, 5), 16)
    torch.testing.assert_close(sixteen, torch.ones(1, 16, 5))
    # Everything but the temporal embedding is unchanged.
    for k, v in model.state_dict().items():
        if "temporal" not in k:
            torch.testing.assert_close(four.state_dict()[k], v, rtol=0, atol=0)


def test_heads_override_and_image_size_interpolation(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "m.pth")
    assert msta_fast.load_viclip(tmp_path / "m.pth", vision_heads=2).config.vision_heads == 2
    bigger = msta_fast.load_viclip(tmp_path / "m.pth", image_size=48)
    assert bigger.vision_encoder.positional_embedding.shape == (1 + 36, 64)
    assert bigger.encode_video(torch.randn(1, 8, 3, 48, 48)).shape == (1, 64)
