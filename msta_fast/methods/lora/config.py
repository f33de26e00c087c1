"""LoRA's options. Defaults: rank 128 on q, k, v, o of the video tower = 9.4M parameters on ViCLIP-B/16 (the
paper's LoRA budget)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from msta_fast.methods.base import MethodConfig, check, check_dim, check_scale, check_towers

TARGETS = ("q", "k", "v", "o")


@dataclass
class LoRAConfig(MethodConfig):
    """``W' = W + scale * B @ A`` on the attention projections ``targets`` of blocks ``start_layer .. L`` of each
    tower in ``towers``; ``rank``: the rank of A and B."""

    method: ClassVar[str] = "lora"
    rank: int = 128
    start_layer: int = 1
    scale: float = 1.0
    targets: tuple[str, ...] = TARGETS
    towers: tuple[str, ...] = ("vision",)

    def validate(self) -> None:
        check_dim("rank", self.rank)
        check_dim("start_layer", self.start_layer)
        check_scale(self.scale)
        check(bool(self.targets) and not set(self.targets) - set(TARGETS),
              f"targets must be some of {TARGETS}, got {self.targets}")
        check_towers(self.towers)
