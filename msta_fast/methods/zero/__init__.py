"""Zero-shot: the backbone as it is; nothing trains, evaluation only."""

from dataclasses import dataclass
from typing import ClassVar

from msta_fast.methods.base import Method, MethodConfig, no_attachment


@dataclass
class ZeroConfig(MethodConfig):
    method: ClassVar[str] = "zero"


METHOD = Method("zero", ZeroConfig, no_attachment, trains=False)

__all__ = ["METHOD", "ZeroConfig"]
