"""Finding the towers of a model to patch: ours (ViCLIP, FrameCLIP), the official InternVideo
ViCLIP module, or an open_clip CLIP. Duck-typed on module names, as PEFT finds target modules."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Tower:
    """A tower's blocks and how its tokens are laid out.

    ``layout``: "viclip" (B, 1 + H*W*T, D) or "frames" (B*T, 1 + H*W, D) for the vision tower,
    None for text. ``seq_first``: the blocks take (L, B, D) (the official ViCLIP code).
    ``grid_module``: the module whose input tells the (T, H, W) token grid.
    """

    name: str
    blocks: nn.ModuleList
    width: int
    layout: str | None = None
    seq_first: bool = False
    grid_module: nn.Module | None = None
    patch_size: int = 0


@dataclass
class VideoGrid:
    """The (T, H, W) patch grid of the current forward, written by a pre-hook on the vision tower."""

    frames: int = 1
    height: int = 0
    width: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


def _seq_first(blocks: nn.ModuleList) -> bool:
    attn = getattr(blocks[0], "attn", None)
    return isinstance(attn, nn.MultiheadAttention) and not attn.batch_first


def _width(blocks: nn.ModuleList) -> int:
    return blocks[0].ln_1.normalized_shape[0]


def _patch_size(conv: nn.Module) -> int:
    return conv.kernel_size[-1]


def find_towers(model: nn.Module) -> tuple[Tower, Tower]:
    """(vision, text) towers of a supported model, or a clear error."""
    from msta_fast.models.frame_clip import FrameCLIP

    if hasattr(model, "vision_encoder") and hasattr(model, "text_encoder"):  # ViCLIP, ours or official
        vis, txt = model.vision_encoder.transformer.resblocks, model.text_encoder.transformer.resblocks
        layout, grid_module, conv = "viclip", model.vision_encoder, model.vision_encoder.conv1
    else:
        clip = model.clip if isinstance(model, FrameCLIP) else model
        if not (hasattr(clip, "visual") and hasattr(clip, "transformer")):
            raise TypeError(
                f"cannot patch {type(model).__name__}: expected a ViCLIP (vision_encoder / text_encoder), "
                "a msta_fast FrameCLIP or an open_clip CLIP (visual / transformer)"
            )
        vis, txt = clip.visual.transformer.resblocks, clip.transformer.resblocks
        layout, grid_module, conv = "frames", clip.visual, clip.visual.conv1
    vision = Tower("vision", vis, _width(vis), layout, _seq_first(vis), grid_module, _patch_size(conv))
    text = Tower("text", txt, _width(txt), None, _seq_first(txt))
    return vision, text
