"""MSTA's options (paper Table 1 defaults for base-to-novel: r = 256, s = 0.005, layers 1-12)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from msta_fast.methods.base import MethodConfig, check, check_dim, check_probability, check_scale, check_towers

LINEAR_INITS = ("kaiming", "xavier")
CONV_INITS = ("zeros", "kaiming", "normal")


@dataclass
class MSTAConfig(MethodConfig):
    """Adapters in parallel with blocks ``start_layer .. L`` (1-based) of each tower in ``towers``.

    ``dim``: the bottleneck r; ``scale``: s; ``dropout`` on the hidden activation after the shared layer;
    ``grad_scale``: the adapter parameters see gradients as if s were 1 (MMA's trick); ``temporal_kernel``
    (kT, kH, kW) of the video adapters' depthwise convolution ((3, 1, 1) reproduces the paper's parameter counts;
    (3, 3, 3) is the natural variant); ``linear_init`` / ``conv_init``; ``share``: one shared layer per depth for
    both towers (False: each tower its own, an ablation); ``num_frames``: frames per clip for a raw open_clip
    CLIP, whose tower sees frames only (ViCLIP and FrameCLIP tell it themselves).
    """

    method: ClassVar[str] = "msta"
    dim: int = 256
    start_layer: int = 1
    scale: float = 0.005
    dropout: float = 0.1
    grad_scale: bool = True
    temporal_kernel: tuple[int, int, int] = (3, 1, 1)
    linear_init: str = "kaiming"
    conv_init: str = "zeros"
    share: bool = True
    towers: tuple[str, ...] = ("vision", "text")
    num_frames: int | None = None

    def validate(self) -> None:
        check_dim("dim", self.dim)
        check_dim("start_layer", self.start_layer)
        check_scale(self.scale)
        check_probability("dropout", self.dropout)
        k = self.temporal_kernel
        check(len(k) == 3 and all(isinstance(s, int) and s >= 1 and s % 2 == 1 for s in k),
              f"temporal_kernel must be three odd sizes (kT, kH, kW), got {k}")
        check(self.linear_init in LINEAR_INITS, f"linear_init must be one of {LINEAR_INITS}, got {self.linear_init!r}")
        check(self.conv_init in CONV_INITS, f"conv_init must be one of {CONV_INITS}, got {self.conv_init!r}")
        check_towers(self.towers)
        check(self.num_frames is None or (isinstance(self.num_frames, int) and self.num_frames >= 1),
              f"num_frames must be an integer >= 1 or None, got {self.num_frames!r}")
