"""AdamW and the per-iteration learning-rate schedule: linear warm-up from 0, then cosine down to lr * min_ratio.

This is what the MSTA authors' logs show (warm-up per iteration from 0, cosine to lr/100).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

log = logging.getLogger(__name__)


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


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98),
                    lr_multipliers: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases, norms, embeddings and ``model.no_weight_decay()`` get none.

    ``lr_multipliers``: parameter-name prefix -> factor; a parameter whose name starts with a prefix trains at
    ``lr * factor`` (the longest matching prefix wins), e.g. ``{"m2clip_adapters.text": 0.5}``; a prefix that
    matches no trainable parameter is logged as a warning (a typo, or a part the model was patched without). The
    parameter groups carry the parameters' names (``param_names``), which checkpoints key the state by, and
    their factor (``lr_multiplier``).
    """
    multipliers = dict(lr_multipliers or {})
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[float, bool], list] = {}
    used = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = max((k for k in multipliers if name.startswith(k)), key=len, default=None)
        used.add(prefix)
        decays = not (p.ndim < 2 or name in skip or name.endswith(".bias"))
        groups.setdefault((multipliers.get(prefix, 1.0), decays), []).append((name, p))
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if unused := sorted(set(multipliers) - used):
        log.warning("lr_multipliers: no trainable parameter starts with %s", ", ".join(map(repr, unused)))
    # decayed before not decayed, then by factor: with no multipliers, the two groups of before
    order = sorted(groups, key=lambda key: (not key[1], key[0] != 1.0, key[0]))
    return torch.optim.AdamW(
        [{"params": groups[key], "weight_decay": weight_decay if key[1] else 0.0, "lr": lr * key[0],
          "lr_multiplier": key[0]} for key in order], lr=lr, betas=tuple(betas))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration ``LambdaLR``: call ``scheduler.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, min_ratio))
