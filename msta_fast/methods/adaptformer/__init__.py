"""AdaptFormer (Chen et al., 2022): a bottleneck MLP (down, ReLU, dropout, up, scale) in parallel with each block's
MLP, on the MLP's input; the paper's AdaptFormer baseline. Defaults: r = 256 in both towers = 7.9M parameters on
ViCLIP-B/16 (the paper's budget), s = 0.1 (AdaptFormer's video setting)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.methods.base import (
    Attachment,
    Method,
    MethodConfig,
    check_dim,
    check_probability,
    check_scale,
    check_towers,
)
from msta_fast.methods.towers import Towers, adapted_blocks


@dataclass
class AdaptFormerConfig(MethodConfig):
    method: ClassVar[str] = "adaptformer"
    dim: int = 256
    start_layer: int = 1
    scale: float = 0.1
    dropout: float = 0.1
    towers: tuple[str, ...] = ("vision", "text")

    def validate(self) -> None:
        check_dim("dim", self.dim)
        check_dim("start_layer", self.start_layer)
        check_scale(self.scale)
        check_probability("dropout", self.dropout)
        check_towers(self.towers)


class AdaptFormerAdapter(nn.Module):
    """``s * Up(dropout(ReLU(Down(x))))``; the up-projection starts at zero (AdaptFormer's initialisation)."""

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


def attach(model: nn.Module, towers: Towers, config: AdaptFormerConfig, enabled) -> Attachment:
    adapters, handles = AdaptFormerAdapters(), []
    for tower in towers:
        if tower.name in config.towers:
            for i in adapted_blocks(tower, config.start_layer):
                adapter = AdaptFormerAdapter(tower.width, config.dim, config.scale, config.dropout)
                getattr(adapters, tower.name)[str(i)] = adapter
                handles.append(tower.blocks[i].mlp.register_forward_hook(mlp_hook(adapter, enabled), prepend=True))
    return Attachment("adaptformer_adapters", adapters, handles)


METHOD = Method("adaptformer", AdaptFormerConfig, attach)

__all__ = ["METHOD", "AdaptFormerAdapter", "AdaptFormerAdapters", "AdaptFormerConfig", "attach"]
