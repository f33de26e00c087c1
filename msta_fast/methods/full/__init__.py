"""Full fine-tuning: every parameter of the backbone trains (the paper's upper-bound baseline)."""

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from msta_fast.methods.base import Attachment, Method, MethodConfig
from msta_fast.methods.towers import Towers


@dataclass
class FullConfig(MethodConfig):
    method: ClassVar[str] = "full"


def attach(model: nn.Module, towers: Towers, config: FullConfig, enabled) -> Attachment:
    return Attachment(trains_everything=True)


METHOD = Method("full", FullConfig, attach)

__all__ = ["METHOD", "FullConfig", "attach"]
