"""Losses against hand-computed values; description embeddings come from the adapter-free text tower."""

import math

import pytest
import torch
import torch.nn.functional as F

import msta_fast
from msta_fast.training.losses import VideoTextLoss, consistency_loss, encode_descriptions, similarity_logits


def test_consistency_loss_hand_values():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    spatial = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # cos 1/sqrt(2), 1
    temporal = torch.tensor([[-3.0, 0.0], [1.0, 0.0]])  # cos -1, 0
    expected = ((2 - 1 / math.sqrt(2) + 1) + (2 - 1 - 0)) / 2
    assert consistency_loss(w, spatial, temporal).item() == pytest.approx(expected)
    assert consistency_loss(spatial, spatial, spatial).item() == pytest.approx(0.0, abs=1e-6)


def test_video_text_loss_is_ce_plus_weighted_cc():
    video, text = torch.randn(5, 8), torch.randn(3, 8, requires_grad=True)
    labels, temp = torch.tensor([0, 1, 2, 1, 0]), 0.05
    spatial, temporal = torch.randn(3, 8), torch.randn(3, 8)
    ce = F.cross_entropy(F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t() / temp, labels)
    loss, parts = VideoTextLoss(spatial, temporal, weight=0.5)(video, text, labels, temp)
    assert loss.item() == pytest.approx(ce.item() + 0.5 * consistency_loss(text, spatial, temporal).item(), rel=1e-5)
    assert set(parts) == {"ce", "cc"}
    plain, parts = VideoTextLoss()(video, text, labels, temp)
    assert plain.item() == pytest.approx(ce.item(), rel=1e-6) and set(parts) == {"ce"}
    loss.backward()
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert similarity_logits(video, text, temp).shape == (5, 3)


def test_description_embeddings_ignore_adapters():
    torch.manual_seed(0)
    model = msta_fast.build_viclip("viclip-tiny", num_frames=2)
    descriptions = {0: ["a red square", "a square moving"], 1: ["a blue bar"]}
    reference = encode_descriptions(model, descriptions, 2)
    msta_fast.patch(model, "msta", dim=8, scale=1.0)
    with torch.no_grad():  # make the adapters change the text tower's output for sure
        for p in msta_fast.adapter_parameters(model).values():
            p.normal_(0, 0.5)
    patched = encode_descriptions(model, descriptions, 2)
    torch.testing.assert_close(patched, reference)
    adapted = F.normalize(model.encode_text(["a blue bar"]), dim=-1)
    assert not torch.allclose(adapted, reference[1:], atol=1e-4)  # the adapters do act outside the block
    # class 0 is the mean of its two L2-normalised sentence embeddings
    with msta_fast.disable_adapters(model), torch.no_grad():
        e = F.normalize(model.encode_text(descriptions[0]), dim=-1)
    torch.testing.assert_close(reference[0], e.mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        encode_descriptions(model, {0: ["x"]}, 2)
