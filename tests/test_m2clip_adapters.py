"""M2-CLIP's adapters through msta_fast.patch: sizes, placement, the TED math in both token layouts,
identity at initialisation, gradients, the way back and saving."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import msta_fast
import msta_fast.data
from msta_fast.methods.m2clip import M2CLIPLossOptions, M2CLIPObjective, VisualHead, WordList, head_options
from msta_fast.methods.m2clip.adapters import TEDAdapter, time_difference
from msta_fast.patching import count_trainable, patch_state

B16_WIDTH, B16_TEXT, B16_EMBED, CA = 768, 512, 512, 384


def linear(n_in, n_out):
    return n_in * n_out + n_out


# TED per vision block: two fc1 (C -> Ca), two fc2 (Ca -> C), a (3,1,1) and a (1,3,3) depthwise conv.
TED_B16 = 2 * linear(B16_WIDTH, CA) + 2 * linear(CA, B16_WIDTH) + (CA * 3 + CA) + (CA * 9 + CA)
TEXT_B16 = linear(B16_TEXT, CA) + linear(CA, B16_TEXT)
FRAME_B16 = linear(B16_EMBED, 256) + (256 * 3 + 256) + linear(256, B16_EMBED)


def tiny_viclip(**kw):
    return msta_fast.build_viclip("viclip-tiny", **{"num_frames": 4, **kw})


def tiny_frame_clip():
    return msta_fast.frame_clip_from_viclip(tiny_viclip())


def visual_head(model):
    """An objective whose visual head scores 3 classes (no MLM head)."""
    return M2CLIPObjective(model, ["a", "b", "c"], M2CLIPLossOptions(mlm=False))


def randomise(model):
    """Make the zero-initialised parts (convolutions, biases) non-zero."""
    with torch.no_grad():
        for p in msta_fast.adapter_parameters(model).values():
            p.normal_(std=0.1)


@pytest.mark.parametrize(
    "options, expected",
    [
        # the release's placement: every vision block, the last text block (and the MLM block, with an MLM head)
        (dict(), 12 * TED_B16 + TEXT_B16),
        (dict(num_classes=400), 12 * TED_B16 + TEXT_B16 + linear(B16_WIDTH, 400)),  # + visual head (K400)
        (dict(text_layers=2), 12 * TED_B16 + 2 * TEXT_B16),
        (dict(pre_attn=True, text_layers="all"), 2 * 12 * TED_B16 + 2 * 12 * TEXT_B16),  # the SSv2 variant
    ],
)
def test_trainable_parameters_on_viclip_b16(options, expected):
    with torch.device("meta"):
        model = msta_fast.build_viclip("viclip-b16")
    msta_fast.patch(model, "m2clip", **options)
    assert count_trainable(model) == expected
    assert msta_fast.trainable_parameters(model).method == "m2clip"


def test_frame_clip_b16_gets_the_frame_level_adapter():
    model = msta_fast.build_frame_clip("ViT-B-16", context_length=32, device="meta")
    msta_fast.patch(model, "m2clip", num_classes=400)
    assert count_trainable(model) == 12 * TED_B16 + TEXT_B16 + FRAME_B16 + linear(B16_WIDTH, 400)
    assert model.m2clip_adapters.frame is not None


def ted_loop_reference(ted, x, T, H, W):
    """TED on frame rows (B*T, 1 + H*W, C), written frame by frame: a 1-D conv over time for every
    token position, and a 2-D conv of each frame's difference map."""
    BT, L, C = x.shape
    Bn, Ca = BT // T, ted.te_fc1.out_features
    a = ted.te_fc1(x).view(Bn, T, L, Ca).permute(0, 2, 3, 1).reshape(Bn * L, Ca, T)
    te = F.conv1d(a, ted.te_conv.weight[:, :, :, 0, 0], ted.te_conv.bias, padding=1, groups=Ca)
    out = x + ted.te_fc2(te.view(Bn, L, Ca, T).permute(0, 3, 1, 2).reshape(BT, L, Ca))
    patches = x[:, 1:].reshape(Bn, T, H * W, C)
    previous = patches[:, [0] + list(range(T - 1))]  # frame 0 is its own predecessor: difference 0
    d = ted.td_fc1(patches - previous).reshape(BT, H, W, Ca).permute(0, 3, 1, 2)
    sd = F.conv2d(d, ted.td_conv.weight[:, :, 0], ted.td_conv.bias, padding=1, groups=Ca)
    td = ted.td_fc2(sd.permute(0, 2, 3, 1).reshape(BT, H * W, Ca))
    return torch.cat([out[:, :1], out[:, 1:] + td], dim=1)


def random_ted(width, dim, layout):
    ted = TEDAdapter(width, dim, layout)
    with torch.no_grad():
        for p in ted.parameters():
            p.normal_(std=0.3)
    return ted


def test_ted_on_frame_rows_matches_the_frame_by_frame_reference():
    torch.manual_seed(1)
    T, H, W, C = 4, 2, 3, 10
    ted = random_ted(C, 6, "frames")
    x = torch.randn(2 * T, 1 + H * W, C, dtype=torch.float64)
    ted = ted.double()
    torch.testing.assert_close(ted(x, (T, H, W)), ted_loop_reference(ted, x, T, H, W))


def test_ted_on_the_viclip_grid_matches_frame_rows():
    """The same patch grid in ViCLIP's order (token 1 + n*T + t) gives the same patch outputs; the single
    class token has no time axis and sees the centre tap only."""
    torch.manual_seed(2)
    Bn, T, H, W, C = 2, 3, 2, 2, 8
    frames_ted = random_ted(C, 5, "frames").double()
    viclip_ted = TEDAdapter(C, 5, "viclip").double()
    viclip_ted.load_state_dict(frames_ted.state_dict())
    grid = torch.randn(Bn, T, H * W, C, dtype=torch.float64)
    cls = torch.randn(Bn, 1, C, dtype=torch.float64)
    frame_rows = torch.cat([cls.repeat_interleave(T, 0), grid.reshape(Bn * T, H * W, C)], 1)
    viclip_tokens = torch.cat([cls, grid.transpose(1, 2).reshape(Bn, H * W * T, C)], 1)
    want = frames_ted(frame_rows, (T, H, W))[:, 1:].reshape(Bn, T, H * W, C).transpose(1, 2).reshape(Bn, -1, C)
    got = viclip_ted(viclip_tokens, (T, H, W))
    torch.testing.assert_close(got[:, 1:], want)
    t = viclip_ted
    centre = t.te_conv.weight[:, 0, 1, 0, 0]
    torch.testing.assert_close(got[:, :1], cls + t.te_fc2(t.te_fc1(cls) * centre + t.te_conv.bias))


def test_time_difference_in_both_layouts():
    T, H, W = 3, 1, 2
    grid = torch.arange(T * H * W, dtype=torch.float32).view(1, T, H * W, 1) ** 2  # (B, T, N, C)
    rows = time_difference(grid.reshape(T, H * W, 1), (T, H, W), "frames").view(1, T, H * W, 1)
    seq = time_difference(grid.transpose(1, 2).reshape(1, H * W * T, 1), (T, H, W), "viclip")
    torch.testing.assert_close(seq.view(1, H * W, T, 1).transpose(1, 2), rows)
    assert (rows[:, 0] == 0).all()
    torch.testing.assert_close(rows[:, 1:], grid[:, 1:] - grid[:, :-1])


def test_ted_rejects_tokens_that_do_not_fit_the_grid():
    with pytest.raises(ValueError, match="do not fit a class token plus a"):
        TEDAdapter(8, 4, "viclip")(torch.randn(1, 1 + 7, 8), (2, 2, 2))


@pytest.mark.parametrize("build", [tiny_viclip, tiny_frame_clip], ids=["viclip", "frame_clip"])
@pytest.mark.parametrize("options", [dict(), dict(pre_attn=True, text_layers="all")], ids=["k400", "ssv2"])
def test_patched_model_starts_equal_to_the_original(build, options):
    model = build().eval().requires_grad_(False)
    video, texts = torch.randn(2, 4, 3, 32, 32), ["a video of a cat.", "b"]
    with torch.no_grad():
        before = model.encode_video(video), model.encode_text(texts)
        msta_fast.patch(model, "m2clip", num_classes=3, **options)
        after = model.encode_video(video), model.encode_text(texts)
        for a, b in zip(after, before, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        randomise(model)
        changed = model.encode_video(video), model.encode_text(texts)
        assert all((a - b).abs().max() > 1e-4 for a, b in zip(changed, before, strict=True))
        with msta_fast.disable_adapters(model):
            for a, b in zip((model.encode_video(video), model.encode_text(texts)), before, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_published_text_initialisation_is_an_option():
    model = tiny_viclip().eval()
    with torch.no_grad():
        before = model.encode_text(["a b c"])
        msta_fast.patch(model, "m2clip", zero_init_text=False)
        assert (model.encode_text(["a b c"]) - before).abs().max() > 1e-6


@pytest.mark.parametrize("build", [tiny_viclip, tiny_frame_clip], ids=["viclip", "frame_clip"])
def test_gradients_reach_only_the_adapters(build):
    model = build()
    msta_fast.patch(model, "m2clip", num_classes=3)
    randomise(model)
    adapters = msta_fast.adapter_parameters(model)
    video = torch.randn(2, 4, 3, 32, 32)
    objective = visual_head(model)
    embedding, features = objective.encode_video(model, video)  # the class token is captured for the head
    loss = embedding.square().mean() + model.encode_text(["a video of a cat."]).square().mean()
    loss = loss + objective.visual_head_logits(features).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        if name not in adapters:
            assert p.grad is None, name
        elif "vision.1.td_" in name:
            # Both models read the embedding off the class token, which the last block's temporal
            # difference (patch tokens only) cannot reach.
            assert p.grad is None or p.grad.abs().sum() == 0, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frame_level_adapter_acts_on_per_frame_embeddings_before_the_average():
    model = tiny_frame_clip().eval()
    msta_fast.patch(model, "m2clip", towers=("vision",), start_layer=2)
    randomise(model)
    video = torch.randn(2, 4, 3, 32, 32)
    frame = model.m2clip_adapters.frame
    with torch.no_grad():
        got = model.encode_video(video)
        with msta_fast.disable_adapters(model):
            raw = model.encode_frames(video)  # (B, T, E) without any adapter
        model.m2clip_adapters.frame = None  # TEDs only
        frames = model.encode_frames(video)
        model.m2clip_adapters.frame = frame
        h = F.conv1d(frame.fc1(frames).transpose(1, 2), frame.conv.weight, frame.conv.bias, padding=1, groups=32)
        torch.testing.assert_close(got, (frames + frame.fc2(h.transpose(1, 2))).mean(1))
        assert (frames - raw).abs().max() > 1e-5


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_viclip()
    msta_fast.patch(model, "m2clip", pre_attn=True, dim=16)
    randomise(model)
    video = torch.randn(2, 4, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        (model.encode_video(video).square().mean() + model.encode_text(["a b"]).square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in msta_fast.adapter_parameters(model).items()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_unpatch_restores_the_model_and_save_load_round_trip(tmp_path):
    model = tiny_viclip().eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    video = torch.randn(1, 4, 3, 32, 32)
    msta_fast.patch(model, "m2clip", num_classes=3, mlm_vocab=7, pre_attn=True)
    randomise(model)
    with torch.no_grad():
        adapted, features = visual_head(model).encode_video(model, video)
        head = visual_head(model).visual_head_logits(features)
    path = msta_fast.save_adapters(model, tmp_path / "m2clip.safetensors")
    last_text_block = model.text_encoder.transformer.resblocks[-1]
    assert hasattr(last_text_block, "m2clip_cross_forward")  # the decoder's pass, a method of the block
    msta_fast.unpatch(model)
    assert model.state_dict().keys() == original.keys() and patch_state(model) is None
    assert not model._forward_hooks and not model.vision_encoder._forward_pre_hooks
    assert not hasattr(last_text_block, "m2clip_cross_forward")
    assert not hasattr(last_text_block, "msta_fast_forward_methods")
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k

    fresh = tiny_viclip().eval()
    fresh.load_state_dict(original)
    msta_fast.load_adapters(fresh, path)
    assert patch_state(fresh).config.pre_attn and patch_state(fresh).config.mlm_vocab == 7
    with torch.no_grad():
        embedding, features = visual_head(fresh).encode_video(fresh, video)
        torch.testing.assert_close(embedding, adapted, rtol=0, atol=0)
        torch.testing.assert_close(visual_head(fresh).visual_head_logits(features), head, rtol=0, atol=0)
    assert not fresh.vision_encoder.ln_post._forward_hooks  # the capture hooks live only as long as a forward


def test_bad_m2clip_options_get_clear_errors():
    model = tiny_viclip()
    with pytest.raises(ValueError, match="text_layers must be an integer >= 0 or 'all'"):
        msta_fast.patch(model, "m2clip", text_layers="some")
    with pytest.raises(ValueError, match="text_layers 5 is more than the text tower's 2 blocks"):
        msta_fast.patch(model, "m2clip", text_layers=5)
    with pytest.raises(ValueError, match="num_classes must be"):
        msta_fast.patch(model, "m2clip", num_classes=0)
    assert patch_state(model) is None


def test_viclip_b16_on_kinetics_400_trains_about_16m_parameters():
    """All of M2-CLIP on K-400's 400 classes: adapters, visual head and the MLM head over the class-name
    word list (the third-party table reports 16M for B/16)."""
    from msta_fast.data.lists import read_labels

    labels = Path(msta_fast.data.__file__).parent / "protocols" / "vifi" / "labels" / "kinetics_400_labels.csv"
    names = read_labels(labels)
    words = len(WordList.from_class_names(names))
    with torch.device("meta"):
        model = msta_fast.build_viclip("viclip-b16")
    msta_fast.patch(model, "m2clip", **head_options(names))
    mlm = B16_TEXT + TEXT_B16 + linear(B16_TEXT, B16_TEXT) + 2 * B16_TEXT + linear(B16_TEXT, words)
    assert count_trainable(model) == 12 * TED_B16 + TEXT_B16 + linear(B16_WIDTH, 400) + mlm
    assert count_trainable(model) == 15_914_726  # K-400's names give a word list of 598 tokens


def test_visual_head_dropout_from_item_seeds_does_not_depend_on_the_batch():
    head = VisualHead(256, 256, dropout=0.5).train()
    with torch.no_grad():  # an identity classifier shows the mask itself
        head.fc.weight.copy_(torch.eye(256))
        head.fc.bias.zero_()
    cls = torch.ones(6, 256)
    seeds = torch.tensor([11, 12, 13, 14, 15, 16])
    whole = head(cls, seeds)
    torch.testing.assert_close(torch.cat([head(cls[:2], seeds[:2]), head(cls[2:], seeds[2:])]), whole)
    assert set(whole.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    assert 0.4 < (whole == 0).float().mean() < 0.6
    assert not torch.equal(head(cls, seeds + 100), whole)
    torch.testing.assert_close(head.eval()(cls, seeds), cls)  # no dropout in evaluation
