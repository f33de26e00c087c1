"""Another frame count than the checkpoint's: InternVideo's rule by default, interpolation on request.

The official code (``load_temp_embed_with_mismatch``) keeps the first N temporal positions for fewer
frames and interpolates linearly (``F.interpolate(mode="linear")``, half-pixel centres) for more.
"""

import pytest
import torch
from conftest import relative_error
from official_viclip import OfficialViCLIP

import msta_fast
from msta_fast.models import get_config
from msta_fast.models.checkpoint import resize_temporal_embedding

KEY = "vision_encoder.temporal_positional_embedding"


@pytest.fixture
def checkpoint(tmp_path):
    """An 8-frame tiny ViCLIP with random weights everywhere, saved as the official .pth."""
    model = msta_fast.build_viclip("viclip-tiny", vision_heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
        model.vision_encoder.temporal_positional_embedding.normal_()
    path = tmp_path / "ViClip-8f.pth"
    torch.save({"model": model.state_dict()}, path)
    return path, model.state_dict()


def _official(sd, num_frames, temporal):
    """InternVideo's module built for ``num_frames`` and given the temporal embedding its loader makes."""
    official = OfficialViCLIP(get_config("viclip-tiny", vision_heads=2, num_frames=num_frames)).eval()
    official.load_state_dict({**sd, KEY: temporal}, strict=True)
    return official


def test_fewer_frames_keep_the_first_positions_as_the_official_code(checkpoint):
    path, sd = checkpoint
    four = msta_fast.load_viclip(path, num_frames=4, vision_heads=2).eval()
    emb8 = sd[KEY]
    torch.testing.assert_close(four.state_dict()[KEY], emb8[:, :4], rtol=0, atol=0)
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        ours = four.encode_video(video)
        official = _official(sd, 4, emb8[:, :4]).encode_vision(video, test=True)
    assert relative_error(ours, official) < 1e-5
    for k, v in sd.items():  # everything else is unchanged
        if k != KEY:
            torch.testing.assert_close(four.state_dict()[k], v, rtol=0, atol=0)


def test_interpolation_for_fewer_frames_is_an_option(checkpoint):
    path, sd = checkpoint
    emb8 = sd[KEY]
    four = msta_fast.load_viclip(path, num_frames=4, vision_heads=2, temporal_resize="interpolate").eval()
    emb4 = four.state_dict()[KEY]
    # Half-pixel centres: new frame i sits at 2i + 0.5 of the old ones, halfway between 2i and 2i + 1.
    torch.testing.assert_close(emb4[0], 0.5 * (emb8[0, 0::2] + emb8[0, 1::2]))
    # ... which is not the function the official model computes with these weights.
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        ours = four.encode_video(video)
        official = _official(sd, 4, emb8[:, :4]).encode_vision(video, test=True)
    assert relative_error(ours, official) > 1e-3


@pytest.mark.parametrize("rule", ["official", "interpolate"])
def test_more_frames_interpolate_linearly_under_both_rules(checkpoint, rule):
    path, sd = checkpoint
    emb8 = sd[KEY]
    sixteen = msta_fast.load_viclip(path, num_frames=16, vision_heads=2, temporal_resize=rule).eval()
    emb16 = sixteen.state_dict()[KEY]
    # Half-pixel centres: new frame j sits at (j + 0.5) / 2 - 0.5 of the old ones, clamped to [0, 7].
    torch.testing.assert_close(emb16[0, 0], emb8[0, 0])
    torch.testing.assert_close(emb16[0, 3], 0.75 * emb8[0, 1] + 0.25 * emb8[0, 2])
    torch.testing.assert_close(emb16[0, 15], emb8[0, 7])
    video = torch.randn(1, 16, 3, 32, 32)
    with torch.no_grad():
        ours = sixteen.encode_video(video)
        # InternVideo's interpolate_temporal_pos_embed: F.interpolate over time, mode="linear".
        stretched = torch.nn.functional.interpolate(emb8.transpose(1, 2), 16, mode="linear").transpose(1, 2)
        official = _official(sd, 16, stretched)
        assert relative_error(ours, official.encode_vision(video, test=True)) < 1e-5


def test_one_frame_uses_the_mean_of_the_kept_positions(checkpoint):
    path, sd = checkpoint
    one = msta_fast.load_viclip(path, num_frames=1, vision_heads=2).eval()
    torch.testing.assert_close(one.state_dict()[KEY], sd[KEY][:, :1], rtol=0, atol=0)
    video = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        official = _official(sd, 1, sd[KEY][:, :1]).encode_vision(video, test=True)
        assert relative_error(one.encode_video(video), official) < 1e-5


def test_unknown_rule_is_refused(checkpoint):
    with pytest.raises(ValueError, match="unknown temporal_resize rule 'nearest'"):
        msta_fast.load_viclip(checkpoint[0], vision_heads=2, temporal_resize="nearest")
    assert resize_temporal_embedding(torch.ones(1, 8, 5), 16, "interpolate").shape == (1, 16, 5)
