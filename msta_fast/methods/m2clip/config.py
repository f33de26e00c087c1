"""M2-CLIP's options (method.md section 5): bottleneck Ca = 384 in the TED and text adapters, no scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from msta_fast.methods.base import MethodConfig, check, check_dim, check_probability, check_towers


@dataclass
class M2CLIPConfig(MethodConfig):
    """``dim``: Ca; TED-Adapters before the MLP of vision blocks ``start_layer .. L``; ``pre_attn``: before
    attention too (the SSv2 variant, in both towers and the MLM block); ``text_layers``: text adapters in the top
    ``text_layers`` blocks of the text tower ("all" for the SSv2 variant), and in the MLM block whenever there is
    an MLM head (the release counts that block among its 13 text blocks: its 2 adapted blocks are
    ``text_layers=1``); ``num_classes``: the visual classification head's classes (None: no head);
    ``head_dropout``; ``frame_adapter``: the frame-level temporal adapter where per-frame embeddings exist
    (frame-wise CLIP); ``zero_init_text``: the text adapters' second linear starts at zero, so the patched model
    starts equal to the original (False: PyTorch's default initialisation, as the release); ``mlm_vocab``: the
    size of the word list of the masked-language-modelling head (None: no MLM head); ``mask_embedding``: masked
    caption tokens become a learned mask embedding (False: the frozen embedding of the word "mask", which is what
    the release's masking code writes); ``num_frames``: frames per clip for a raw open_clip CLIP.
    :func:`msta_fast.methods.m2clip.head_options` gives ``num_classes`` and ``mlm_vocab`` for class names.
    """

    method: ClassVar[str] = "m2clip"
    dim: int = 384
    start_layer: int = 1
    towers: tuple[str, ...] = ("vision", "text")
    pre_attn: bool = False
    text_layers: int | str = 1
    num_classes: int | None = None
    head_dropout: float = 0.5
    frame_adapter: bool = True
    zero_init_text: bool = True
    mlm_vocab: int | None = None
    mask_embedding: bool = True
    num_frames: int | None = None

    def validate(self) -> None:
        check_dim("dim", self.dim)
        check_dim("start_layer", self.start_layer)
        check_towers(self.towers)
        check(self.text_layers == "all" or (isinstance(self.text_layers, int) and self.text_layers >= 0),
              f"text_layers must be an integer >= 0 or 'all', got {self.text_layers!r}")
        for name in ("num_classes", "mlm_vocab", "num_frames"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, int) and value >= 1),
                  f"{name} must be an integer >= 1 or None, got {value!r}")
        check_probability("head_dropout", self.head_dropout)
