"""Finding the towers of a model to patch, and the hook helpers every method shares.

Supported models, duck-typed on module names as PEFT finds target modules: ours (ViCLIP, FrameCLIP), the
official InternVideo ViCLIP module, and an open_clip CLIP (consecutive images being the frames of a clip).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

log = logging.getLogger(__name__)


@dataclass
class Tower:
    """A tower's blocks and how its tokens are laid out.

    ``layout``: "viclip" (B, 1 + H*W*T, D) or "frames" (B*T, 1 + H*W, D) for the vision tower, None for text.
    ``seq_first``: the blocks take (L, B, D) (the official ViCLIP code). ``grid_module``: the vision module
    whose input (B, 3, T, H, W) or (B*T, 3, H, W) tells the patch grid; ``frames_module`` (frame-wise CLIP
    only): a module whose input (B, T, 3, H, W) tells the frames per clip. ``container``: the module that holds
    ``blocks`` as ``resblocks`` and runs them.
    """

    name: str
    blocks: nn.ModuleList
    width: int
    layout: str | None = None
    seq_first: bool = False
    grid_module: nn.Module | None = None
    frames_module: nn.Module | None = None
    patch_size: int = 0
    container: nn.Module | None = None


class Towers(NamedTuple):
    vision: Tower
    text: Tower


@dataclass
class VideoGrid:
    """The (T, H, W) patch grid of the current video forward, set by a pre-hook on the vision tower (see
    :func:`track_grid`) and read by the temporal adapters of the same forward."""

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


def find_towers(model: nn.Module) -> Towers:
    """(vision, text) towers of a supported model, or a clear error."""
    frames_module = None
    if hasattr(model, "vision_encoder") and hasattr(model, "text_encoder"):  # ViCLIP, ours or official
        vis_container, txt_container = model.vision_encoder.transformer, model.text_encoder.transformer
        layout, grid_module = "viclip", model.vision_encoder
    else:
        clip = getattr(model, "clip", model)  # msta_fast's FrameCLIP wraps an open_clip CLIP
        if not (hasattr(clip, "visual") and hasattr(clip, "transformer")):
            raise TypeError(
                f"cannot patch {type(model).__name__}: expected a ViCLIP (vision_encoder / text_encoder), "
                "a msta_fast FrameCLIP or an open_clip CLIP (visual / transformer)"
            )
        vis_container, txt_container = clip.visual.transformer, clip.transformer
        layout, grid_module = "frames", clip.visual
        frames_module = getattr(model, "flatten_frames", None)
    vis, txt = vis_container.resblocks, txt_container.resblocks
    patch_size = grid_module.conv1.kernel_size[-1]
    vision = Tower("vision", vis, _width(vis), layout, _seq_first(vis), grid_module, frames_module, patch_size,
                   vis_container)
    text = Tower("text", txt, _width(txt), None, _seq_first(txt), container=txt_container)
    return Towers(vision, text)


class _RestoreForward:
    """Handle of :func:`nonreentrant_checkpointing` for one container: ``remove()`` gives it back its forward."""

    def __init__(self, container: nn.Module):
        self.container = container
        self.previous = container.__dict__.get("forward")  # an instance-level forward of the user's, if any

    def remove(self) -> None:
        if self.previous is None:
            self.container.__dict__.pop("forward", None)
        else:
            self.container.__dict__["forward"] = self.previous


def _nonreentrant_forward(container: nn.Module):
    """The official ViCLIP Transformer's ``forward(x)`` with ``use_reentrant=False``: the first ``checkpoint_num``
    blocks of a ``ModuleList`` checkpointed one by one (the vision tower), or ``checkpoint_sequential`` over
    ``min(checkpoint_num, L)`` segments for an ``nn.Sequential`` (the text tower). ``checkpoint_num`` is read per
    call, as the original does; without autograd the blocks run plainly (nothing to save)."""
    blocks = container.resblocks

    def forward(x: torch.Tensor) -> torch.Tensor:
        count = container.checkpoint_num
        if not torch.is_grad_enabled() or count <= 0:
            for block in blocks:
                x = block(x)
            return x
        if isinstance(blocks, nn.Sequential):
            return checkpoint_sequential(blocks, min(count, len(blocks)), x, use_reentrant=False)
        for i, block in enumerate(blocks):
            x = checkpoint(block, x, use_reentrant=False) if i < count else block(x)
        return x

    return forward


def nonreentrant_checkpointing(towers: Towers) -> list[_RestoreForward]:
    """Make the towers whose blocks run under *reentrant* activation checkpointing use the non-reentrant kind.

    The official InternVideo ViCLIP hard-codes ``vision_encoder_checkpoint_num = 24``: its vision Transformer
    (``checkpoint_num`` > 0) runs every block through ``torch.utils.checkpoint.checkpoint(blk, x)`` without
    ``use_reentrant``, which is the reentrant kind. Its input comes from the frozen stem and does not require
    grad, so nothing inside the blocks (adapters, LoRA's factors, what a hook captures) gets a gradient. The same
    blocks are checkpointed non-reentrantly instead: the same memory saving, and the gradients of an unpatched
    forward. Logs a warning naming what changed; returns handles whose ``remove()`` restores the original forward.
    Containers without ``checkpoint_num`` (msta_fast's, open_clip's: both non-reentrant already) are left alone.
    """
    handles, changed = [], []
    for tower in towers:
        container = tower.container
        count = getattr(container, "checkpoint_num", 0)
        if not (isinstance(count, int) and count > 0 and hasattr(container, "resblocks")):
            continue
        handles.append(_RestoreForward(container))
        container.forward = _nonreentrant_forward(container)
        changed.append(f"{tower.name} tower ({type(container).__name__}, checkpoint_num={count})")
    if changed:
        log.warning(
            "patch: %s checkpoints its blocks with reentrant activation checkpointing, under which the adapters "
            "inside them get no gradient (the blocks' input does not require grad); they now run with "
            "non-reentrant checkpointing (the same blocks, the same memory saving); unpatch restores it",
            " and ".join(changed))
    return handles


def adapted_blocks(tower: Tower, start_layer: int) -> range:
    """0-based indices of blocks ``start_layer .. L`` (1-based ``start_layer``) of a tower."""
    n = len(tower.blocks)
    if not 1 <= start_layer <= n:
        raise ValueError(f"start_layer {start_layer} is out of range for the {tower.name} tower's {n} blocks (1..{n})")
    return range(start_layer - 1, n)


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The token tensor a block was called with (ours: x; open_clip: q_x)."""
    if args:
        return args[0]
    for name in ("x", "q_x", "hidden_states"):
        if name in kwargs:
            return kwargs[name]
    raise TypeError("cannot find the block's token input among its arguments")


def with_block_input(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    """``args, kwargs`` with the block's token input replaced by ``x``."""
    if args:
        return (x, *args[1:]), kwargs
    for name in ("x", "q_x", "hidden_states"):
        if name in kwargs:
            return args, {**kwargs, name: x}
    raise TypeError("cannot find the block's token input among its arguments")


def track_grid(vision: Tower, grid: VideoGrid, num_frames: int | None) -> list:
    """Pre-hooks that keep ``grid`` up to date with each video forward; returns their handles.

    ViCLIP's tower input (B, 3, T, H, W) tells the whole grid. Frame-wise CLIP's (B*T, 3, H, W) tells H and W;
    T comes from FrameCLIP's ``flatten_frames`` input (B, T, 3, H, W), or, for a raw open_clip CLIP, from
    ``num_frames`` (the patch option), else 1.
    """
    p = vision.patch_size

    def first_input(args, kwargs):
        return args[0] if args else next(iter(kwargs.values()))

    def on_tower(module, args, kwargs):
        x = first_input(args, kwargs)
        grid.height, grid.width = x.shape[-2] // p, x.shape[-1] // p
        if vision.layout == "viclip":
            grid.frames = x.shape[2]
        elif vision.frames_module is None:
            grid.frames = num_frames or 1

    def on_frames(module, args, kwargs):
        grid.frames = first_input(args, kwargs).shape[1]

    handles = [vision.grid_module.register_forward_pre_hook(on_tower, with_kwargs=True)]
    if vision.layout == "frames" and vision.frames_module is not None:
        handles.append(vision.frames_module.register_forward_pre_hook(on_frames, with_kwargs=True))
    return handles


def in_tower_order(tower: Tower, x: torch.Tensor) -> torch.Tensor:
    """Between a block's own token order ((L, B, D) when ``seq_first``) and (B, L, D); its own inverse."""
    return x.transpose(0, 1) if tower.seq_first else x
