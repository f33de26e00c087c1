"""ViCLIP: the architecture of the published checkpoints and the same function as the published code."""

import pytest
import torch
from conftest import randomise_viclip, relative_error
from official_viclip import OfficialViCLIP

import msta_fast
from msta_fast.models import get_config
from msta_fast.models.tokenizer import tokenize


def _small_cfg(**kw):
    return get_config("viclip-tiny", **kw)


def test_presets_match_published_checkpoints_on_meta_device():
    with torch.device("meta"):
        b16 = msta_fast.build_viclip("viclip-b16")
        l14 = msta_fast.build_viclip("viclip-l14")
    for model, n_tensors, n_params in ((b16, 303, 149_603_841), (l14, 447, 427_590_145)):
        sd = model.state_dict()
        assert len(sd) == n_tensors
        assert sum(t.numel() for t in sd.values()) == n_params
        assert all(t.is_meta for t in sd.values())
    sd = b16.state_dict()
    assert sd["vision_encoder.conv1.weight"].shape == (768, 3, 1, 16, 16)
    assert sd["vision_encoder.temporal_positional_embedding"].shape == (1, 8, 768)
    assert sd["text_encoder.positional_embedding"].shape == (32, 512)
    assert sd["temp"].shape == ()
    assert b16.config.vision_heads == 12 and l14.config.vision_heads == 16 and l14.config.text_heads == 12


@pytest.mark.parametrize("frames", [1, 4])
def test_same_function_as_the_published_code(frames):
    cfg = _small_cfg(num_frames=4, vision_layers=3, text_layers=2, vision_width=128, text_width=64)
    ours = randomise_viclip(msta_fast.ViCLIP(cfg)).eval()
    official = OfficialViCLIP(cfg).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    video = torch.randn(3, frames, 3, cfg.image_size, cfg.image_size)
    texts = ["a video of juggling.", "someone is walking a dog in the park", "x" * 200]
    with torch.no_grad():  # test=True: the official inference path (its default masks 90% of the tokens)
        assert relative_error(ours.encode_video(video), official.encode_vision(video, test=True)) < 1e-5
        assert relative_error(ours.encode_text(texts), official.encode_text(texts)) < 1e-5


def test_token_order_is_patch_major_time_minor():
    """Token 1 + n*T + t is patch n of frame t: changing frame t changes exactly those tokens' embeddings."""
    model = msta_fast.build_viclip("viclip-tiny").eval()
    T, N = 8, model.config.grid_size**2
    video = torch.randn(1, 3, T, 32, 32)
    changed = video.clone()
    changed[:, :, 5] += 1.0
    diff = (model.vision_encoder.embed(video) - model.vision_encoder.embed(changed)).abs().sum(-1)[0]
    expected = torch.zeros(1 + N * T, dtype=torch.bool)
    expected[1 + torch.arange(N) * T + 5] = True
    assert torch.equal(diff > 0, expected)


def test_encode_shapes_dtypes_and_errors():
    model = msta_fast.build_viclip("viclip-tiny")
    assert model.encode_video(torch.randn(2, 8, 3, 32, 32)).shape == (2, 64)
    assert model.encode_text(["a", "b", "c"]).shape == (3, 64)
    assert model.encode_text(tokenize(["a"])).shape == (1, 64)
    with pytest.raises(ValueError, match="B, T, 3, H, W"):
        model.encode_video(torch.randn(8, 3, 32, 32))
    with pytest.raises(ValueError, match="num_frames=5"):
        model.encode_video(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown ViCLIP preset"):
        msta_fast.build_viclip("viclip-h14")
    with pytest.raises(ValueError, match="unknown ViCLIP config keys"):
        msta_fast.build_viclip("viclip-tiny", depth=3)


def test_tokenizer_matches_open_clip_at_context_32():
    import open_clip

    texts = ["a video of abseiling.", "Pouring WATER  into a glass!", "ünïcödé", "word " * 50, ""]
    ours = tokenize(texts)
    reference = open_clip.get_tokenizer("ViT-B-16", context_length=32)(texts)
    assert ours.shape == (5, 32) and torch.equal(ours, reference)
    sot, eot = 49406, 49407
    assert (ours[:, 0] == sot).all()
    assert ours[3, -1] == eot  # a long text is cut and still ends with EOT
    assert ours[4, 1] == eot and (ours[4, 2:] == 0).all()


def test_logits_use_temp():
    model = msta_fast.build_viclip("viclip-tiny").eval()
    video, texts = torch.randn(2, 8, 3, 32, 32), ["a", "b", "c"]
    with torch.no_grad():
        logits = model(video, texts)
        v = torch.nn.functional.normalize(model.encode_video(video), dim=-1)
        t = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
    torch.testing.assert_close(logits, v @ t.T / 0.01)
