"""The methods' objectives against hand-computed values; description embeddings come from the adapter-free text
tower; the training step runs the towers, then the objective."""

import math

import pytest
import torch
import torch.nn.functional as F

import msta_fast
from msta_fast.methods import Encoded, Objective, get_method
from msta_fast.methods.base import similarity_logits
from msta_fast.methods.msta import MSTAObjective, consistency_loss
from msta_fast.training.descriptions import encode_descriptions
from msta_fast.training.step import TrainStep


def test_consistency_loss_hand_values():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    spatial = torch.tensor([[1.0, 1.0], [0.0, 5.0]])  # cos 1/sqrt(2), 1
    temporal = torch.tensor([[-3.0, 0.0], [1.0, 0.0]])  # cos -1, 0
    expected = ((2 - 1 / math.sqrt(2) + 1) + (2 - 1 - 0)) / 2
    assert consistency_loss(w, spatial, temporal).item() == pytest.approx(expected)
    assert consistency_loss(spatial, spatial, spatial).item() == pytest.approx(0.0, abs=1e-6)


def test_msta_objective_is_ce_plus_weighted_cc():
    video, text = torch.randn(5, 8), torch.randn(3, 8, requires_grad=True)
    labels, temp = torch.tensor([0, 1, 2, 1, 0]), 0.05
    spatial, temporal = torch.randn(3, 8), torch.randn(3, 8)
    classes = ["a", "b", "c"]
    ce = F.cross_entropy(F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t() / temp, labels)
    loss, parts = MSTAObjective(classes, spatial, temporal, weight=0.5)(Encoded(video, text, temp), labels)
    assert loss.item() == pytest.approx(ce.item() + 0.5 * consistency_loss(text, spatial, temporal).item(), rel=1e-5)
    assert set(parts) == {"ce", "cc"}
    plain, parts = MSTAObjective(classes)(Encoded(video, text, temp), labels)
    assert plain.item() == pytest.approx(ce.item(), rel=1e-6) and set(parts) == {"ce"}
    loss.backward()
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert similarity_logits(video, text, temp).shape == (5, 3)
    # the baselines' objective is the cross-entropy alone; every objective scores by softmax(cos / temp)
    base, _ = Objective(classes)(Encoded(video, text, temp), labels)
    assert base.item() == pytest.approx(ce.item(), rel=1e-6)
    scores = Objective(classes).scores(Encoded(video, text, temp), classes)
    torch.testing.assert_close(scores["text"], similarity_logits(video, text, temp).softmax(-1))


@pytest.mark.parametrize("method", ["msta", "lora", "adaptformer", "full", "m2clip"])
def test_train_step_runs_the_towers_then_the_objective(method):
    """TrainStep(model, objective)(video, class ids, labels) is the objective on the two towers' embeddings."""
    torch.manual_seed(0)
    classes = ["red square", "blue bar", "green triangle"]
    model = msta_fast.build_viclip("viclip-tiny", num_frames=4).eval()
    spec = get_method(method)
    options = spec.loss_options() if spec.loss_options else None
    config = spec.for_classes(spec.config(), classes, options)
    msta_fast.patch(model, method, config=config)
    objective = spec.objective(model, config, classes, options)
    step = TrainStep(model, objective)
    video, labels = torch.randn(2, 4, 3, 32, 32), torch.tensor([0, 2])
    ids = msta_fast.tokenize([f"a video of {c}." for c in classes])
    torch.manual_seed(1)
    loss, parts = step(video, ids, labels, torch.tensor([5, 6]))
    torch.manual_seed(1)
    video_emb, features = objective.encode_video(model, video)
    want, _ = objective(Encoded(video_emb, model.encode_text(ids), model.temp, features), labels, torch.tensor([5, 6]))
    torch.testing.assert_close(loss, want)
    assert torch.isfinite(loss) and parts
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in msta_fast.adapter_parameters(model).values())
    with torch.no_grad():
        scores = step.score(video, step.encode_text(ids), classes)
    assert next(iter(scores)) == "text" and all(s.shape == (2, 3) for s in scores.values())
    torch.testing.assert_close(scores["text"].sum(-1), torch.ones(2))
    # M2-CLIP's visual head scores the training classes only
    assert ("visual_head" in scores) == (method == "m2clip")
    with torch.no_grad():
        other = step.score(video, step.encode_text(ids[:2]), classes[:2])
    assert set(other) == {"text"}


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
