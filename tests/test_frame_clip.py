"""Frame-wise CLIP: open_clip's image tower per frame, averaged; loads ViCLIP and OpenAI-format weights."""

import open_clip
import pytest
import torch
from conftest import relative_error

import msta_fast
from msta_fast.models.frame_clip import viclip_to_open_clip


@pytest.fixture
def viclip():
    m = msta_fast.build_viclip("viclip-tiny").eval()
    with torch.no_grad():
        m.vision_encoder.temporal_positional_embedding.normal_()
    return m


def test_one_frame_matches_viclip_with_zero_temporal_embedding(viclip):
    frame_clip = msta_fast.frame_clip_from_viclip(viclip).eval()
    with torch.no_grad():
        viclip.vision_encoder.temporal_positional_embedding.zero_()
        video = torch.randn(3, 1, 3, 32, 32)
        assert relative_error(frame_clip.encode_video(video), viclip.encode_video(video)) < 1e-6
        texts = ["a video of a dog.", "two people are talking"]
        assert relative_error(frame_clip.encode_text(texts), viclip.encode_text(texts)) < 1e-6
        torch.testing.assert_close(frame_clip.temp, viclip.temp)


def test_frames_are_encoded_one_by_one_and_averaged(viclip):
    frame_clip = msta_fast.frame_clip_from_viclip(viclip).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        per_frame = torch.stack([frame_clip.encode_video(video[:, t : t + 1]) for t in range(4)], 1)
        torch.testing.assert_close(frame_clip.encode_video(video), per_frame.mean(1))


def test_load_from_viclip_checkpoint(tmp_path, viclip):
    torch.save({"model": viclip.state_dict()}, tmp_path / "viclip.pth")
    frame_clip = msta_fast.load_frame_clip(tmp_path / "viclip.pth").eval()
    assert frame_clip.pixel_stats == "imagenet" and frame_clip.context_length == 32
    reference = msta_fast.frame_clip_from_viclip(viclip).eval()
    video = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(frame_clip.encode_video(video), reference.encode_video(video))


def test_load_openai_format_state_dict_renormalises_input(tmp_path, viclip):
    sd = viclip_to_open_clip(viclip.state_dict())
    torch.save(sd, tmp_path / "openai.pt")
    frame_clip = msta_fast.load_frame_clip(tmp_path / "openai.pt").eval()
    assert frame_clip.pixel_stats == "clip"
    # ImageNet-normalised input is turned into CLIP-normalised input for these weights.
    pixels = torch.rand(1, 1, 3, 32, 32)
    imagenet = (pixels - torch.tensor(msta_fast.IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
        msta_fast.IMAGENET_STD
    ).view(3, 1, 1)
    clip_norm = (pixels - torch.tensor(msta_fast.CLIP_MEAN).view(3, 1, 1)) / torch.tensor(msta_fast.CLIP_STD).view(
        3, 1, 1
    )
    with torch.no_grad():
        expected = frame_clip.clip.encode_image(clip_norm[:, 0])
        assert relative_error(frame_clip.encode_video(imagenet), expected) < 1e-5


def test_key_mismatch_in_openai_state_dict(tmp_path, viclip):
    sd = viclip_to_open_clip(viclip.state_dict())
    sd["visual.unexpected"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(msta_fast.CheckpointMismatchError, match="visual.unexpected"):
        msta_fast.load_frame_clip(tmp_path / "bad.pt")


def test_build_frame_clip_from_open_clip_name():
    model = msta_fast.build_frame_clip("ViT-B-16", context_length=32)
    assert isinstance(model.clip, open_clip.CLIP)
    assert model.context_length == 32
    assert sum(p.numel() for p in model.clip.visual.parameters()) > 80e6


def test_open_clip_weights_with_plain_gelu(tmp_path, viclip):
    torch.save(viclip_to_open_clip(viclip.state_dict()), tmp_path / "laion.pt")
    quick = msta_fast.load_frame_clip(tmp_path / "laion.pt")
    plain = msta_fast.load_frame_clip(tmp_path / "laion.pt", quick_gelu=False)
    assert type(quick.clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert isinstance(plain.clip.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    video = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert (quick.encode_video(video) - plain.encode_video(video)).abs().max() > 1e-4
