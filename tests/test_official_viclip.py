"""msta_fast.patch on the official InternVideo ViCLIP module (the faithful double of tests/official_viclip.py):
every adapter trains through its reentrant checkpointing, with the gradients of our ViCLIP on the same weights;
patch / unpatch switch the checkpointing over and back; the token masking of its default ``encode_vision``."""

import logging

import pytest
import torch
from conftest import randomise_viclip
from official_viclip import OfficialViCLIP

import msta_fast
from msta_fast.models import get_config

TEXTS = ["a video of juggling.", "someone walks a dog"]
# Patch options per method: small, every part non-zero after `randomise`, dropout off.
OPTIONS = {
    "msta": dict(dim=8, scale=0.3, dropout=0.0, conv_init="kaiming"),
    "lora": dict(rank=4, towers=("vision", "text")),
    "adaptformer": dict(dim=8, dropout=0.0),
    "m2clip": dict(dim=8, pre_attn=True, text_layers="all"),
}
# Parameters that get a zero gradient on any ViCLIP, by design: the last vision block's temporal paths only change
# patch tokens, and the embedding is read off the class token after that block.
NO_PATH_TO_THE_OUTPUT = ("msta_adapters.vision.1.tconv", "m2clip_adapters.vision.1.td_",
                         "m2clip_adapters.vision_attn.1.td_")


def config():
    return get_config("viclip-tiny", num_frames=4, vision_layers=2, text_layers=2, vision_heads=2, text_heads=2)


def twins(method, text_checkpoint_num=0):
    """Our ViCLIP and the official module with the same weights, patched alike, adapters equal and non-zero."""
    torch.manual_seed(0)
    ours = randomise_viclip(msta_fast.ViCLIP(config()))
    official = OfficialViCLIP(config())
    official.load_state_dict(ours.state_dict(), strict=True)
    official.text_encoder.transformer.checkpoint_num = text_checkpoint_num
    for model in (ours, official):
        msta_fast.patch(model, method, **OPTIONS[method])
    with torch.no_grad():
        for p in msta_fast.adapter_parameters(ours).values():
            p.normal_(std=0.2)
        official_adapters = msta_fast.adapter_parameters(official)
        assert official_adapters.keys() == msta_fast.adapter_parameters(ours).keys()
        for name, p in msta_fast.adapter_parameters(ours).items():
            official_adapters[name].copy_(p)
    return ours, official


def video():
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def adapter_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad for n, p in msta_fast.adapter_parameters(model).items()}


def test_the_double_reproduces_the_trap():
    """Unpatched, the double checkpoints every vision block reentrantly: a parameter used inside a block through a
    hook (as an adapter is) gets no gradient from a frozen stem."""
    model = OfficialViCLIP(config()).eval().requires_grad_(False)
    weight = torch.nn.Parameter(torch.ones(()))
    block = model.vision_encoder.transformer.resblocks[0]
    block.register_forward_hook(lambda module, args, out: out * weight)
    runs = []
    block.register_forward_pre_hook(lambda module, args: runs.append(1))
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):  # PyTorch's own hint
        out = model.encode_vision(video(), test=True)
    assert not out.requires_grad and weight.grad is None and len(runs) == 1
    assert model.vision_encoder.transformer.checkpoint_num == 24 and model.masking_prob == 0.9
    assert isinstance(model.text_encoder.transformer.resblocks, torch.nn.Sequential)
    assert model.text_encoder.tokenize(TEXTS, context_length=32).dtype == torch.int32


@pytest.mark.parametrize("method", list(OPTIONS))
def test_every_adapter_trains_with_the_gradients_of_our_viclip(method, caplog):
    with caplog.at_level(logging.WARNING, logger="msta_fast.methods.towers"):
        ours, official = twins(method)
    warnings = [r.getMessage() for r in caplog.records if "reentrant" in r.getMessage()]
    assert len(warnings) == 1 and "vision tower" in warnings[0] and "text tower" not in warnings[0]
    ours.eval(), official.eval()  # no dropout or drop path: the same function
    x = video()
    got = adapter_grads(official, official.encode_vision(x, test=True).square().mean()
                        + official.encode_text(TEXTS).square().mean())
    expected = adapter_grads(ours, ours.encode_video(x).square().mean() + ours.encode_text(TEXTS).square().mean())
    assert any(".vision" in n or "vision_encoder" in n for n in got)
    for name, grad in got.items():
        assert grad is not None, name
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
        if not name.startswith(NO_PATH_TO_THE_OUTPUT):
            assert grad.abs().sum() > 0, name


@pytest.mark.parametrize("method", list(OPTIONS))
def test_training_mode_with_drop_path_trains_every_adapter(method):
    """In training mode (drop path on) every adapter is in the graph: under reentrant checkpointing the video
    adapters' gradients would be None (and LoRA's backward an error)."""
    _, official = twins(method)
    official.train()
    grads = adapter_grads(official, official.encode_vision(video(), test=True).square().mean()
                          + official.encode_text(TEXTS).square().mean())
    assert all(grad is not None for grad in grads.values()), [n for n, g in grads.items() if g is None]
    vision = [n for n in grads if n.startswith("vision_encoder") or ".vision" in n]
    assert vision and sum(grads[n].abs().sum() for n in vision) > 0


def test_the_same_blocks_stay_checkpointed_and_unpatch_restores_the_original():
    """Checkpointed blocks run twice per training step (forward, then recomputed in the backward)."""
    model = OfficialViCLIP(config()).train().requires_grad_(False)  # a frozen backbone
    container = model.vision_encoder.transformer
    original_forward = type(container).forward
    runs = {"vision": 0, "text": 0}
    for tower, blocks in (("vision", container.resblocks), ("text", model.text_encoder.transformer.resblocks)):
        for block in blocks:
            block.register_forward_pre_hook(lambda module, args, tower=tower: runs.__setitem__(tower, runs[tower] + 1))

    def step():
        runs.update(vision=0, text=0)
        loss = model.encode_vision(video(), test=True).square().mean() + model.encode_text(TEXTS).square().mean()
        loss.backward()
        return dict(runs)

    msta_fast.patch(model, "lora", rank=2)
    assert "forward" in vars(container)
    assert step() == {"vision": 2 * 2, "text": 2}  # 2 vision blocks checkpointed; the text tower is not
    msta_fast.unpatch(model)
    assert "forward" not in vars(container) and type(container).forward is original_forward
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):  # the reentrant original again
        out = model.encode_vision(video(), test=True)
    assert not out.requires_grad
    msta_fast.patch(model, "zero")  # nothing trains: nothing to change
    assert "forward" not in vars(container)


def test_a_checkpointed_sequential_text_tower_trains_too(caplog):
    """The text blocks (an nn.Sequential) under checkpoint_sequential, had a user turned it on."""
    with caplog.at_level(logging.WARNING, logger="msta_fast.methods.towers"):
        ours, official = twins("msta", text_checkpoint_num=2)
    assert "vision tower" in caplog.text and "text tower" in caplog.text
    ours.eval(), official.eval()
    got = adapter_grads(official, official.encode_text(TEXTS).square().mean())
    expected = adapter_grads(ours, ours.encode_text(TEXTS).square().mean())
    text = [n for n in got if n.startswith(("msta_adapters.text", "msta_adapters.shared"))]
    assert text and all(got[n].abs().sum() > 0 for n in text)
    for name in text:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["msta", "m2clip"])
def test_masked_tokens_get_an_error_that_says_what_to_do(method):
    _, official = twins(method)
    with pytest.raises(ValueError, match=r"encode_vision\(x\) defaults to test=False.*test=True.*masking_prob = 0"):
        official.encode_vision(video())
    official.masking_prob = 0.0  # masking off for every call: the default path works
    torch.testing.assert_close(official.encode_vision(video()), official.encode_vision(video(), test=True))


@pytest.mark.parametrize("method", ["lora", "adaptformer"])
def test_token_wise_adapters_train_with_masking(method):
    _, official = twins(method)
    official.eval()  # the default encode_vision masks in eval mode too
    out = official.encode_vision(video())  # masked: 10% of the patch tokens
    grads = adapter_grads(official, out.square().mean())
    vision = [n for n in grads if n.startswith(("vision_encoder", "adaptformer_adapters.vision"))]
    assert vision and all(grads[n] is not None and grads[n].abs().sum() > 0 for n in vision)
