"""AdamW and the per-iteration learning-rate schedule: linear warm-up from 0, then cosine down to lr * min_ratio.

This is what the MSTA authors' logs show (warm-up per iteration from 0, cosine to lr/100).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.01) -> float:
    """LR multiplier at optimizer step ``step`` (0-based, the multiplier used *for* that step).

    ``step < warmup``: ``step / warmup`` (so the first step runs at lr 0, as the authors' logs);
    then ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p = (step - warmup) / (total - warmup)``.
    """
    if step < warmup_steps:
        return step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms, embeddings and ``model.no_weight_decay()`` get none.

    The parameter groups carry the parameters' names (``param_names``), which checkpoints key the state by.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip or name.endswith(".bias") else decay).append((name, p))
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``LambdaLR``: call ``scheduler.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_ratio))
