"""Building MSTA's adapters for a model's towers and hooking them in.

Each adapter attaches with a forward hook on its block, prepended so that it runs while a wrapper's own
post-forward hooks (FSDP2 resharding the block) have not yet run: ``out + s * A(ln_1(block input))``.
"""

from __future__ import annotations

from torch import nn

from msta_fast.methods.base import Attachment
from msta_fast.methods.msta.config import MSTAConfig
from msta_fast.methods.msta.modules import MSTAAdapter, MSTAAdapters, MSTASharedLayer
from msta_fast.methods.towers import Tower, Towers, VideoGrid, adapted_blocks, block_input, in_tower_order, track_grid


def build_adapters(towers: Towers, config: MSTAConfig) -> MSTAAdapters:
    """Adapters for blocks ``start_layer..L`` of each tower. With towers of different depth (L/14: 24 video
    blocks, 12 text blocks) depths pair from the top and unpaired blocks get a shared layer of their own."""
    vision, text = towers
    adapters = MSTAAdapters()
    offset = len(vision.blocks) - len(text.blocks)  # text block i pairs with vision block i + offset
    if "vision" in config.towers:
        for i in adapted_blocks(vision, config.start_layer):
            adapters.shared[str(i)] = MSTASharedLayer(config.dim, config.linear_init)
            adapters.vision[str(i)] = MSTAAdapter(vision.width, adapters.shared[str(i)], config, vision.layout)
    if "text" in config.towers:
        for i in adapted_blocks(text, config.start_layer):
            key = str(i + offset)
            if not config.share or key not in adapters.shared:
                key = key if key not in adapters.shared else f"text{i}"
                adapters.shared[key] = MSTASharedLayer(config.dim, config.linear_init)
            adapters.text[str(i)] = MSTAAdapter(text.width, adapters.shared[key], config)
    return adapters


def block_hook(adapter: MSTAAdapter, tower: Tower, grid: VideoGrid | None, enabled):
    """Forward hook of a block: its output + s * A(ln_1(block input)), accumulated by the op."""

    def hook(block, args, kwargs, out):
        if not enabled():
            return out
        h = in_tower_order(tower, block.ln_1(block_input(args, kwargs)))
        y = adapter(h, in_tower_order(tower, out), grid.shape if grid is not None else None)
        return in_tower_order(tower, y)

    return hook


def attach(model: nn.Module, towers: Towers, config: MSTAConfig, enabled) -> Attachment:
    adapters = build_adapters(towers, config)
    grid = VideoGrid()
    handles = []
    for tower, tower_adapters, tower_grid in ((towers.vision, adapters.vision, grid),
                                              (towers.text, adapters.text, None)):
        for i, adapter in tower_adapters.items():
            hook = block_hook(adapter, tower, tower_grid, enabled)
            handles.append(tower.blocks[int(i)].register_forward_hook(hook, with_kwargs=True, prepend=True))
    if len(adapters.vision):
        handles += track_grid(towers.vision, grid, config.num_frames)
    return Attachment("msta_adapters", adapters, handles)
