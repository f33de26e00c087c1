"""Building M2-CLIP's adapters and heads for a model's towers and hooking the adapters in.

The adapters attach with hooks, as MSTA's: a pre-hook on the block (the pre-attention adapter and the stream
value ``x``) and a forward hook on its attention, whose output ``attn_out`` becomes ``attn_out + delta(x +
attn_out)``, which is the same as adapting ``x + attn_out`` before the MLP. On frame-wise CLIP the frame-level
temporal adapter is a forward hook on the vision tower (its per-frame embeddings). Forward hooks are prepended,
so that they run before a wrapper's own post-forward hooks (FSDP2 resharding a block).
"""

from __future__ import annotations

from torch import nn

from msta_fast.methods.base import Attachment
from msta_fast.methods.m2clip.adapters import FrameTemporalAdapter, M2CLIPAdapters, TEDAdapter, TextAdapter, VisualHead
from msta_fast.methods.m2clip.config import M2CLIPConfig
from msta_fast.methods.m2clip.decoder import MLMDecoder
from msta_fast.methods.towers import (
    Tower,
    Towers,
    VideoGrid,
    adapted_blocks,
    block_input,
    in_tower_order,
    track_grid,
    with_block_input,
)


def _text_blocks(text: Tower, layers) -> range:
    n = len(text.blocks)
    if layers == "all":
        return range(n)
    if layers > n:
        raise ValueError(f"text_layers {layers} is more than the text tower's {n} blocks")
    return range(n - layers, n)


def embed_dim(vision: Tower) -> int:
    proj = getattr(vision.grid_module, "proj", None)
    return proj.shape[1] if proj is not None else vision.width


def build_adapters(towers: Towers, config: M2CLIPConfig) -> M2CLIPAdapters:
    vision, text = towers
    adapters = M2CLIPAdapters()
    if "vision" in config.towers:
        for i in adapted_blocks(vision, config.start_layer):
            adapters.vision[str(i)] = TEDAdapter(vision.width, config.dim, vision.layout)
            if config.pre_attn:
                adapters.vision_attn[str(i)] = TEDAdapter(vision.width, config.dim, vision.layout)
        # Per-frame embeddings exist only in frame-wise CLIP; ViCLIP pools one class token over all frames, so the
        # frame-level adapter has nothing to act on there.
        if config.frame_adapter and vision.layout == "frames":
            adapters.frame = FrameTemporalAdapter(embed_dim(vision))
    if "text" in config.towers:
        for i in _text_blocks(text, config.text_layers):
            adapters.text[str(i)] = TextAdapter(text.width, config.dim, config.zero_init_text)
            if config.pre_attn:
                adapters.text_attn[str(i)] = TextAdapter(text.width, config.dim, config.zero_init_text)
    if config.num_classes is not None:
        adapters.head = VisualHead(vision.width, config.num_classes, config.head_dropout)
    if config.mlm_vocab is not None:
        adapters.decoder = MLMDecoder(text.width, embed_dim(vision), config.mlm_vocab, config.dim,
                                      config.zero_init_text, pre_attn=config.pre_attn,
                                      mask_embedding=config.mask_embedding)
    return adapters


def _apply(adapter, x, tower: Tower, grid: VideoGrid | None):
    """The adapter's increment for a block's token tensor in the tower's own (L, B, D) or (B, L, D) order."""
    return in_tower_order(tower, adapter.delta(in_tower_order(tower, x), grid.shape if grid is not None else None))


def block_pre_hook(pre_attn, slot: dict, tower: Tower, grid: VideoGrid | None, enabled):
    """Block pre-hook: the pre-attention adapter (if any), and the stream value kept for the attention hook."""

    def hook(block, args, kwargs):
        if not enabled():
            return None
        x = block_input(args, kwargs)
        if pre_attn is not None:
            x = x + _apply(pre_attn, x, tower, grid)
            args, kwargs = with_block_input(args, kwargs, x)
        slot["x"] = x
        return args, kwargs

    return hook


def attention_hook(adapter, slot: dict, tower: Tower, grid: VideoGrid | None, enabled):
    """Forward hook on a block's attention: ``attn_out + delta(x + attn_out)`` (the adapter before the MLP)."""

    def hook(attn, args, out):
        x = slot.pop("x", None)
        if not enabled() or x is None:
            return out
        attn_out = out[0] if isinstance(out, tuple) else out
        attn_out = attn_out + _apply(adapter, x + attn_out, tower, grid)
        return (attn_out, *out[1:]) if isinstance(out, tuple) else attn_out

    return hook


def frame_adapter_hook(adapters: M2CLIPAdapters, enabled):
    """Forward hook on frame-wise CLIP's vision tower: the frame-level adapter (``adapters.frame``, looked up per
    call) on its (B*T, E) frame embeddings."""

    def hook(visual, args, out):
        if not enabled() or adapters.frame is None:
            return out
        pooled = out[0] if isinstance(out, tuple) else out
        pooled = adapters.frame(pooled.reshape(-1, adapters.grid.frames, pooled.shape[-1])).reshape(pooled.shape)
        return (pooled, *out[1:]) if isinstance(out, tuple) else pooled

    return hook


def attach(model: nn.Module, towers: Towers, config: M2CLIPConfig, enabled) -> Attachment:
    adapters = build_adapters(towers, config)
    handles = []
    for tower, pre_mlp, pre_attn, tower_grid in (
        (towers.vision, adapters.vision, adapters.vision_attn, adapters.grid),
        (towers.text, adapters.text, adapters.text_attn, None),
    ):
        for i, adapter in pre_mlp.items():
            block, slot = tower.blocks[int(i)], {}
            hook = block_pre_hook(pre_attn[i] if i in pre_attn else None, slot, tower, tower_grid, enabled)
            handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
            hook = attention_hook(adapter, slot, tower, tower_grid, enabled)
            handles.append(block.attn.register_forward_hook(hook, prepend=True))
    handles += track_grid(towers.vision, adapters.grid, config.num_frames)
    if adapters.frame is not None:
        hook = frame_adapter_hook(adapters, enabled)
        handles.append(towers.vision.grid_module.register_forward_hook(hook, prepend=True))
    if adapters.decoder is not None:
        handles.append(adapters.decoder.attach(towers.text.blocks[-1]))
    return Attachment("m2clip_adapters", adapters, handles)
