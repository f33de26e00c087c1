"""msta_fast.patch: parameter counts, identity at scale 0, gradient flow, patch/unpatch, errors."""

import pytest
import torch
from official_viclip import OfficialViCLIP

import msta_fast
from msta_fast.ops.reference import msta_adapter_ref, token_dwconv_ref
from msta_fast.patching import count_trainable, patch_state


def tiny(**kw):
    return msta_fast.build_viclip("viclip-tiny", **kw)


def video(frames=8, batch=2):
    return torch.randn(batch, frames, 3, 32, 32)


@pytest.mark.parametrize(
    "method, options, expected",
    [
        ("msta", dict(dim=256, start_layer=1), 8_712_192),  # the paper's 8.7M
        ("msta", dict(dim=128, start_layer=8), 1_744_000),  # the authors' logs: 1.744 MB
        ("msta", dict(), 8_712_192),  # the paper's defaults
        ("lora", dict(), 9_437_184),  # the paper's LoRA budget, 9.4M
        ("lora", dict(rank=64, targets=("q", "v")), 12 * 2 * 64 * (768 + 768)),
        ("adaptformer", dict(), 7_885_824),  # the paper's AdaptFormer budget, 7.9M
        ("full", dict(), 149_603_841),
        ("zero", dict(), 0),
    ],
)
def test_trainable_parameter_counts_on_viclip_b16(method, options, expected):
    with torch.device("meta"):
        model = msta_fast.build_viclip("viclip-b16")
    msta_fast.patch(model, method, **options)
    report = msta_fast.trainable_parameters(model)
    assert report.trainable == expected == count_trainable(model)
    assert f"{expected:,}" in str(report)


def test_temporal_kernel_333_adds_the_spatial_taps():
    with torch.device("meta"):
        model = msta_fast.build_viclip("viclip-b16")
    msta_fast.patch(model, dim=256, temporal_kernel=(3, 3, 3))
    assert count_trainable(model) == 8_712_192 + 12 * 768 * (27 - 3)


@pytest.mark.parametrize("method", ["msta", "lora", "adaptformer"])
def test_scale_zero_is_the_identity(method):
    model = tiny().eval()
    # nn.MultiheadAttention picks its kernel by requires_grad: freeze first, so that only the
    # adapters differ between the two runs.
    model.requires_grad_(False)
    x, texts = video(), ["a video of a cat.", "b"]
    with torch.no_grad():
        before = model.encode_video(x), model.encode_text(texts)
    options = dict(conv_init="kaiming") if method == "msta" else {}
    msta_fast.patch(model, method, scale=0.0, **options)
    for p in msta_fast.adapter_parameters(model).values():
        p.data.normal_()  # zero-initialised parts (LoRA's B, AdaptFormer's up) made non-zero
    with torch.no_grad():
        after = model.encode_video(x), model.encode_text(texts)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nonzero_scale_changes_both_towers():
    model = tiny().eval().requires_grad_(False)
    x, texts = video(), ["a video of a cat."]
    with torch.no_grad():
        before = model.encode_video(x), model.encode_text(texts)
        msta_fast.patch(model, scale=0.5)
        after = model.encode_video(x), model.encode_text(texts)
        assert all((a - b).abs().max() > 1e-4 for a, b in zip(after, before, strict=True))
        with msta_fast.disable_adapters(model):
            for a, b in zip((model.encode_video(x), model.encode_text(texts)), before, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradients_reach_only_adapters_and_the_shared_layer_from_both_towers():
    model = tiny(vision_layers=2, text_layers=2)
    msta_fast.patch(model, dim=16, conv_init="kaiming", dropout=0.0)
    adapters = set(msta_fast.adapter_parameters(model))
    shared = model.msta_adapters.shared["1"].weight

    def grad_of(loss_fn):
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        return shared.grad.clone()

    g_video = grad_of(lambda: model.encode_video(video()).square().mean())
    g_text = grad_of(lambda: model.encode_text(["a video of a cat."]).square().mean())
    assert g_video.abs().sum() > 0 and g_text.abs().sum() > 0
    torch.manual_seed(0)
    model.zero_grad(set_to_none=True)
    (model.encode_video(video()).square().mean() + model.encode_text(["a video of a cat."]).square().mean()).backward()
    for name, p in model.named_parameters():
        if name.startswith("msta_adapters.vision.1.tconv"):
            # The last block's temporal path only changes patch tokens, and the video embedding is
            # read off the class token after that block: this convolution cannot affect the output.
            assert p.grad is not None and p.grad.abs().sum() == 0, name
        elif name in adapters:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_gradient_scaling_semantics():
    """Output s*A; parameters get the gradient as if s were 1; the input gets the true gradient."""
    torch.manual_seed(3)
    C, r, T, H, W = 12, 8, 3, 2, 2
    x = torch.randn(2, 1 + H * W * T, C, requires_grad=True)
    weights = [
        torch.randn(r, C),
        torch.randn(r),
        torch.randn(r, r),
        torch.randn(r),
        torch.randn(C, r),
        torch.randn(C),
        torch.randn(C, 1, 3, 1, 1),
        torch.randn(C),
    ]
    weights = [w.requires_grad_() for w in weights]
    s = 0.01
    grads = {}
    for grad_scale in (True, False):
        out = msta_adapter_ref(x, *weights, scale=s, grad_scale=grad_scale, grid=(T, H, W))
        grads[grad_scale] = torch.autograd.grad(out.sin().sum(), [x, *weights])
    torch.testing.assert_close(grads[True][0], grads[False][0])  # input: the true gradient
    for a, b in zip(grads[True][1:], grads[False][1:], strict=True):
        torch.testing.assert_close(a, b / s)  # parameters: as if s were 1


def test_temporal_conv_layouts_agree():
    """The same (T, H, W) grid in ViCLIP's layout and in frame rows gives the same convolution."""
    B, T, H, W, C = 2, 4, 3, 2, 5
    grid = torch.randn(B, T, H, W, C)
    weight, bias = torch.randn(C, 1, 3, 3, 3), torch.randn(C)
    viclip_tokens = grid.permute(0, 2, 3, 1, 4).reshape(B, H * W * T, C)  # patch-major, time-minor
    frame_rows = grid.reshape(B * T, H * W, C)
    a = token_dwconv_ref(viclip_tokens, weight, bias, (T, H, W), "viclip")
    b = token_dwconv_ref(frame_rows, weight, bias, (T, H, W), "frames")
    torch.testing.assert_close(a.reshape(B, H, W, T, C).permute(0, 3, 1, 2, 4), b.reshape(B, T, H, W, C))
    # (3,1,1) mixes exactly the neighbouring frames of one patch.
    w311 = torch.zeros(C, 1, 3, 1, 1)
    w311[:, 0, 0] = 1.0  # out[t] = in[t-1]
    shifted = token_dwconv_ref(frame_rows, w311, None, (T, H, W), "frames").reshape(B, T, H, W, C)
    torch.testing.assert_close(shifted[:, 1:], grid[:, :-1])
    assert (shifted[:, 0] == 0).all()


def test_patch_unpatch_round_trip():
    model = tiny()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    x = video()
    with torch.no_grad():
        before = model.encode_video(x)
    msta_fast.patch(model, "lora", scale=2.0)
    for p in msta_fast.adapter_parameters(model).values():
        p.data.normal_()
    with torch.no_grad():
        assert (model.encode_video(x) - before).abs().max() > 1e-3
    msta_fast.unpatch(model)
    assert model.state_dict().keys() == original.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, original[k]), k
    assert all(p.requires_grad for p in model.parameters())
    assert patch_state(model) is None
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(x), before, rtol=0, atol=0)
    for method in ("msta", "adaptformer", "full", "zero"):
        msta_fast.patch(model, method)
        msta_fast.unpatch(model)
        assert model.state_dict().keys() == original.keys()


def test_bad_options_get_clear_errors():
    model = tiny()
    with pytest.raises(KeyError, match="unknown method 'prompt'"):
        msta_fast.patch(model, "prompt")
    with pytest.raises(ValueError, match="start_layer 3 is out of range"):
        msta_fast.patch(model, start_layer=3)
    with pytest.raises(ValueError, match="start_layer must be an integer >= 1"):
        msta_fast.patch(model, start_layer=0)
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        msta_fast.patch(model, dim=0)
    # an option another method has is no option of this one: named, with the method's own list
    with pytest.raises(ValueError, match="'msta' has no option 'rank'; its options: dim, start_layer"):
        msta_fast.patch(model, rank=4)
    with pytest.raises(ValueError, match="'lora' has no option 'dim', 'dropout'"):
        msta_fast.patch(model, "lora", dim=4, dropout=0.1)
    with pytest.raises(ValueError, match="'full' has no option 'scale'; its options: none"):
        msta_fast.patch(model, "full", scale=1.0)
    with pytest.raises(ValueError, match="temporal_kernel"):
        msta_fast.patch(model, temporal_kernel=(2, 1, 1))
    assert patch_state(model) is None  # nothing half-done
    msta_fast.patch(model)
    with pytest.raises(RuntimeError, match="already patched"):
        msta_fast.patch(model)
    with pytest.raises(TypeError, match="cannot patch Linear"):
        msta_fast.patch(torch.nn.Linear(3, 3))


def test_gradient_checkpointing_still_trains_adapters_with_a_frozen_stem():
    model = tiny()
    msta_fast.patch(model, dim=16, dropout=0.0, conv_init="kaiming")
    x = video()
    grads = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        (model.encode_video(x).square().mean() + model.encode_text(["a b"]).square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in msta_fast.adapter_parameters(model).items()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_patch_official_layout_gives_the_same_model():
    """Sequence-first blocks (the official ViCLIP module) get the same adapters and outputs as ours."""
    ours = tiny(num_frames=4).eval()
    official = OfficialViCLIP(ours.config).eval()
    official.load_state_dict(ours.state_dict())
    msta_fast.patch(ours, dim=16, scale=0.3, conv_init="kaiming")
    msta_fast.patch(official, dim=16, scale=0.3)
    official.msta_adapters.load_state_dict(ours.msta_adapters.state_dict())
    x = video(frames=4)
    texts = ["a video of x.", "y"]
    with torch.no_grad():
        torch.testing.assert_close(official.encode_vision(x, test=True), ours.encode_video(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(official.encode_text(texts), ours.encode_text(texts), rtol=1e-5, atol=1e-5)


def test_patch_frame_clip_isolates_clips_and_matches_viclip_on_one_frame():
    viclip = tiny().eval()
    frame_clip = msta_fast.frame_clip_from_viclip(viclip).eval()
    msta_fast.patch(viclip, dim=16, scale=0.5, conv_init="kaiming")
    msta_fast.patch(frame_clip, dim=16, scale=0.5)
    frame_clip.msta_adapters.load_state_dict(viclip.msta_adapters.state_dict())
    with torch.no_grad():
        viclip.vision_encoder.temporal_positional_embedding.zero_()
        one = video(frames=1)
        torch.testing.assert_close(frame_clip.encode_video(one), viclip.encode_video(one), rtol=1e-5, atol=1e-5)
        # The temporal path mixes frames of one clip, never frames of another clip.
        x = video(frames=4)
        base = frame_clip.encode_frames(x)
        y = x.clone()
        y[0, 2] += 1.0
        changed = frame_clip.encode_frames(y)
        assert torch.equal(changed[1], base[1])
        assert (changed[0, 1] - base[0, 1]).abs().max() > 1e-5  # frame 1 sees frame 2 through the conv


def test_patch_raw_open_clip_model_with_num_frames():
    viclip = tiny().eval()
    clip = msta_fast.frame_clip_from_viclip(viclip).clip
    msta_fast.patch(clip, dim=8, num_frames=2, conv_init="kaiming")
    frames = torch.randn(4, 3, 32, 32)  # two clips of two frames
    out = clip.encode_image(frames)
    assert out.shape == (4, 64)
    with pytest.raises(ValueError, match="do not fit"):
        clip.encode_image(torch.randn(3, 3, 32, 32))
