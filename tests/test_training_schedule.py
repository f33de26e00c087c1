"""The per-iteration warm-up + cosine schedule against hand-computed values, and the optimizer groups."""

import math

import pytest
import torch

from msta_fast.training.schedule import build_optimizer, build_scheduler, warmup_cosine


def test_warmup_cosine_hand_values():
    # total 10 steps, 2 warm-up, floor 0.01: warm-up 0, 0.5; cosine over the 8 remaining steps
    assert warmup_cosine(0, 10, 2, 0.01) == 0.0
    assert warmup_cosine(1, 10, 2, 0.01) == 0.5
    assert warmup_cosine(2, 10, 2, 0.01) == pytest.approx(1.0)
    # step 6: progress 4/8 = 0.5 -> 0.01 + 0.99 * (1 + cos(pi/2)) / 2 = 0.505
    assert warmup_cosine(6, 10, 2, 0.01) == pytest.approx(0.505)
    # step 4: progress 0.25 -> 0.01 + 0.99 * (1 + sqrt(2)/2) / 2
    assert warmup_cosine(4, 10, 2, 0.01) == pytest.approx(0.01 + 0.99 * (1 + math.sqrt(0.5)) / 2)
    assert warmup_cosine(10, 10, 2, 0.01) == pytest.approx(0.01)  # ends at lr / 100
    assert warmup_cosine(3, 10, 0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_scheduler_steps_per_iteration():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2, min_ratio=0.01)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(5e-4) and lrs[2] == pytest.approx(1e-3)
    assert lrs[6] == pytest.approx(0.505e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))


def test_optimizer_groups_and_betas():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].requires_grad_(False)
    opt = build_optimizer(model, 1e-3, 1e-3, (0.9, 0.98))
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])] and decay["weight_decay"] == 1e-3
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # bias + LayerNorm weight, bias
    assert decay["betas"] == (0.9, 0.98)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(torch.nn.Linear(2, 2).requires_grad_(False), 1e-3, 0.0)
