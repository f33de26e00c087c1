"""AdaptFormer: a bottleneck MLP (down, ReLU, dropout, up, scale) in parallel with each block's MLP,
on the MLP's input. The up-projection starts at zero (AdaptFormer's initialisation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AdaptFormerAdapter(nn.Module):
    def __init__(self, width: int, dim: int, scale: float, dropout: float):
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)
        self.scale, self.dropout = scale, dropout
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down(x)), self.dropout, self.training)
        return self.up(h) * self.scale


class AdaptFormerAdapters(nn.Module):
    """Container: ``vision.{i}``, ``text.{i}`` (0-based block indices)."""

    def __init__(self):
        super().__init__()
        self.vision = nn.ModuleDict()
        self.text = nn.ModuleDict()


def mlp_hook(adapter: AdaptFormerAdapter, enabled):
    """Forward hook on a block's MLP: MLP(x) + s * Adapter(x), x being the MLP input (ln_2 output)."""

    def hook(mlp, args, out):
        return out + adapter(args[0]) if enabled() else out

    return hook
