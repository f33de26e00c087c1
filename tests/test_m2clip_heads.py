"""M2-CLIP's multi-task decoder: the contrastive KL head, the word list and real token masking, the MLM
head (it trains, and it looks at the video), the head switches and the total loss."""

import pytest
import torch
import torch.nn.functional as F

import msta_fast
from msta_fast.methods import Encoded
from msta_fast.methods.m2clip import (
    IGNORE_INDEX,
    M2CLIPObjective,
    WordList,
    class_name_positions,
    contrastive_kl_loss,
    head_options,
    mask_tokens,
    same_label_target,
)
from msta_fast.methods.m2clip import M2CLIPLossOptions as Heads

CLASSES = ["riding a bike", "playing guitar", "juggling balls", "surfing"]


def tiny_viclip():
    return msta_fast.build_viclip("viclip-tiny", num_frames=4)


def test_contrastive_kl_with_distinct_labels_is_the_symmetric_cross_entropy():
    logits = torch.randn(5, 5)
    labels = torch.arange(5)
    want = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(contrastive_kl_loss(logits, labels), want)


def test_contrastive_kl_marks_same_label_pairs_as_positives():
    labels = torch.tensor([0, 1, 0])
    target = same_label_target(labels)
    torch.testing.assert_close(target, torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]]))
    logits = torch.randn(3, 3, dtype=torch.float64)
    p_v, p_t = logits.softmax(1), logits.t().softmax(1)

    def kl(p):  # mean over rows of sum_j t_ij log(t_ij / p_ij), the zero targets left out
        pairs = zip(target.flatten().double(), p.flatten(), strict=True)
        return sum(t * (t / q).log() for t, q in pairs if t > 0) / 3

    torch.testing.assert_close(contrastive_kl_loss(logits, labels), (kl(p_v) + kl(p_t)) / 2)
    # The minimum is reached by spreading the probability evenly over the positives.
    assert contrastive_kl_loss(target.log().clamp_min(-1e4), labels) < 1e-6


def test_word_list_holds_the_class_name_tokens_and_targets_only_the_name():
    words = WordList.from_class_names(CLASSES)
    ids = msta_fast.tokenize(["A video of juggling balls", "A video of riding a bike"])
    index = words.index(ids)[0]
    name = msta_fast.tokenize(["juggling balls"])[0]
    name_ids = name[1 : name.argmax()]  # between start and end of text (the largest id)
    span = slice(4, 4 + len(name_ids))  # SOT, "a", "video", "of", then the class name
    assert (index[span] >= 0).all() and (index[span.stop :] == -1).all()
    assert torch.equal(words.token_ids[index[span]], name_ids)
    assert index[1] >= 0  # "a" is a word of "riding a bike"...
    targets = class_name_positions(ids, ["juggling balls", "riding a bike"])
    assert not targets[:, :4].any()  # ... but the prompt's "a" is no target
    assert targets[0].sum() == len(name_ids) and targets[1].sum() == 3
    assert torch.equal(targets[0].nonzero().flatten(), torch.arange(span.start, span.stop))
    with pytest.raises(ValueError, match="word list is empty"):
        WordList.from_class_names([""])


def test_masking_is_real_and_bert_style():
    words = WordList.from_class_names(CLASSES)
    ids = msta_fast.tokenize([f"A video of {c}" for c in CLASSES] * 500)
    g = torch.Generator().manual_seed(0)
    new_ids, use_mask, labels = mask_tokens(ids, words, prob=0.15, generator=g)
    chosen = labels != IGNORE_INDEX
    candidate = words.index(ids) >= 0
    assert (chosen <= candidate).all() and chosen.any(1).all()  # only class-name tokens; >= 1 per caption
    torch.testing.assert_close(words.index(ids)[chosen], labels[chosen])
    assert (use_mask <= chosen).all()
    assert torch.equal(new_ids[~chosen], ids[~chosen])
    fraction = use_mask.sum() / chosen.sum()
    assert 0.75 < fraction < 0.85  # 80% become the mask embedding
    replaced = chosen & ~use_mask & (new_ids != ids)
    assert (words.index(new_ids[replaced]) >= 0).all()  # random replacements are words of the list
    assert 0.05 < replaced.sum() / chosen.sum() < 0.12
    assert chosen.sum() > 0.15 * candidate.sum()  # at least the drawn 15%


def test_masks_from_row_seeds_do_not_depend_on_the_batch():
    """With one seed per caption, a caption's masks are the same whatever batch it is in (and whichever process
    holds it); different seeds give different masks."""
    words = WordList.from_class_names(CLASSES)
    ids = msta_fast.tokenize([f"A video of {c}" for c in CLASSES] * 8)
    seeds = torch.arange(len(ids)) * 7919 + 3
    whole = mask_tokens(ids, words, prob=0.5, row_seeds=seeds)
    halves = [mask_tokens(ids[part], words, prob=0.5, row_seeds=seeds[part])
              for part in (slice(0, 13), slice(13, None))]
    for got, want in zip((torch.cat(parts) for parts in zip(*halves, strict=True)), whole, strict=True):
        assert torch.equal(got, want)
    reseeded = mask_tokens(ids, words, prob=0.5, row_seeds=seeds + 1)
    assert not torch.equal(reseeded[2], whole[2])
    with pytest.raises(ValueError, match="3 seeds for 32 captions"):
        mask_tokens(ids, words, row_seeds=seeds[:3])


def objective_setup(heads=None, seed=0, **options):
    torch.manual_seed(seed)
    model = tiny_viclip()
    msta_fast.patch(model, "m2clip", dim=32, **head_options(CLASSES, heads), **options)
    return model, M2CLIPObjective(model, CLASSES, heads)


def encode(model, objective, video):
    """The batch through both towers, with the features the objective captures from the video forward."""
    video_emb, features = objective.encode_video(model, video)
    return Encoded(video_emb, model.encode_text(CLASSES), model.temp, features)


def batch():
    return torch.randn(4, 4, 3, 32, 32), torch.tensor([0, 1, 1, 3])


def test_total_loss_combines_the_heads_as_published():
    model, objective = objective_setup()
    video, labels = batch()
    loss, parts = objective(encode(model, objective, video), labels)
    want = (parts["contrastive"] + parts["text_ce"]) / 2 + parts["visual_ce"] + parts["mlm"] / 10
    assert parts["loss"] == pytest.approx(want, rel=1e-5)
    assert all(v > 0 for v in parts.values())


@pytest.mark.parametrize("off", ["contrastive", "text_ce", "visual_ce", "mlm"])
def test_each_head_can_be_switched_off(off):
    heads = Heads(**{off: False})
    model, objective = objective_setup(heads)
    video, labels = batch()
    loss, parts = objective(encode(model, objective, video), labels)
    assert off not in parts and len(parts) == 4
    if off == "visual_ce":
        assert model.m2clip_adapters.head is None
    if off == "mlm":
        assert model.m2clip_adapters.decoder is None


def test_all_heads_off_and_mismatched_patches_are_errors():
    with pytest.raises(ValueError, match="every head"):
        Heads(False, False, False, False)
    model = tiny_viclip()
    with pytest.raises(ValueError, match="must be patched with method 'm2clip'"):
        M2CLIPObjective(model, CLASSES)
    msta_fast.patch(model, "m2clip", num_classes=3)
    with pytest.raises(ValueError, match="num_classes=4"):
        M2CLIPObjective(model, CLASSES)


def test_mlm_head_looks_at_the_video_and_learns():
    model, objective = objective_setup(Heads(contrastive=False, text_ce=False, visual_ce=False), seed=1)
    video, labels = batch()
    _, features = objective.encode_video(model, video)
    frames = features["tokens"]
    loss = objective.mlm_loss(features, labels)
    (grad,) = torch.autograd.grad(loss, frames, retain_graph=True)
    assert grad.abs().sum() > 0  # the prediction depends on the visual tokens (cross-attention)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(12):
        _, features = objective.encode_video(model, video)
        loss = objective.mlm_loss(features, labels)  # new masks every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("options", [dict(), dict(pre_attn=True, text_layers="all"), dict(mask_embedding=False)],
                         ids=["k400", "ssv2", "word_mask"])
def test_gradients_of_the_objective_reach_every_adapter_and_nothing_else(options):
    model, objective = objective_setup(**options)
    assert (model.m2clip_adapters.decoder.adapter_attn is not None) == bool(options.get("pre_attn"))
    with torch.no_grad():
        for p in msta_fast.adapter_parameters(model).values():
            p.normal_(std=0.1)
    video, labels = batch()
    loss, _ = objective(encode(model, objective, video), labels)
    loss.backward()
    trainable = msta_fast.adapter_parameters(model)
    for name, p in model.named_parameters():
        if name in trainable:
            # The MLM head reads ViCLIP's frames off the patch tokens: every adapter matters.
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("build", [tiny_viclip, lambda: msta_fast.frame_clip_from_viclip(tiny_viclip())],
                         ids=["viclip", "frame_clip"])
def test_objective_after_a_bf16_autocast_forward(build):
    """The recipes run the forward under bf16 autocast on GPUs and the loss after it, outside autocast."""
    torch.manual_seed(0)
    model = build()
    msta_fast.patch(model, "m2clip", dim=16, **head_options(CLASSES))
    objective = M2CLIPObjective(model, CLASSES)
    video, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = encode(model, objective, video)
    assert encoded.video.dtype == torch.bfloat16
    loss, parts = objective(encoded, labels)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"loss", "contrastive", "text_ce", "visual_ce", "mlm"}
    assert model.m2clip_adapters.head.fc.weight.grad.abs().sum() > 0
