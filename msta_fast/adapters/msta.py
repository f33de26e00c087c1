"""MSTA: adapters in parallel with the top blocks of both towers (method.md section 2).

``x_j = Block_j(x_{j-1}) + s * A_j(ln_1_j(x_{j-1}))``; per depth one shared layer ``S_j`` used by
both towers; the video adapter adds a depthwise temporal convolution of its up-projection over
the (T, H, W) patch grid. The math lives in ``functional.msta_adapter_ref``; these modules hold
the weights and call the op through ``msta_fast.ops`` (which picks the fast backend).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msta_fast.adapters.config import PatchConfig
from msta_fast.adapters.towers import Tower, VideoGrid
from msta_fast.ops import msta_adapter


def init_linear(layer: nn.Linear, how: str) -> None:
    # MMA's choice (the paper says Kaiming): Kaiming-normal, fan_out, ReLU gain; zero bias.
    if how == "kaiming":
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    else:
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class MSTASharedLayer(nn.Linear):
    """S_j = Linear(r, r) (+ ReLU in the op), one per adapted depth, used by both towers."""

    def __init__(self, dim: int, init: str = "kaiming"):
        super().__init__(dim, dim)
        init_linear(self, init)


class MSTAAdapter(nn.Module):
    """One tower's adapter at one depth: Down (D -> r), the shared layer, Up (r -> D) and, for
    the video tower, the depthwise temporal convolution ``tconv`` over the patch grid.

    The shared layer is referenced, not registered, so that it has one name (``shared.{j}`` of
    the container) and one entry in the state dict although two towers use it.
    """

    def __init__(self, width: int, shared: MSTASharedLayer, cfg: PatchConfig, layout: str | None = None):
        super().__init__()
        r = cfg.dim
        self.down = nn.Linear(width, r)
        self.up = nn.Linear(r, width)
        init_linear(self.down, cfg.linear_init)
        init_linear(self.up, cfg.linear_init)
        self._shared = (shared,)
        self.layout = layout
        self.scale, self.grad_scale, self.dropout = cfg.scale, cfg.grad_scale, cfg.dropout
        if layout is not None:
            k = cfg.temporal_kernel
            self.tconv = nn.Conv3d(width, width, k, padding=tuple(s // 2 for s in k), groups=width)
            if cfg.conv_init == "zeros":
                nn.init.zeros_(self.tconv.weight)
            elif cfg.conv_init == "kaiming":
                nn.init.kaiming_normal_(self.tconv.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(self.tconv.weight, std=1.0 / math.prod(k))
            nn.init.zeros_(self.tconv.bias)

    @property
    def shared(self) -> MSTASharedLayer:
        return self._shared[0]

    def forward(self, h: torch.Tensor, residual: torch.Tensor, grid: tuple[int, int, int] | None = None):
        """h: ln_1 of the block input (B, L, D); residual: the block output (B, L, D)."""
        conv = getattr(self, "tconv", None)
        if conv is not None:
            T, H, W = grid
            per_row = H * W * T if self.layout == "viclip" else H * W
            if h.shape[1] != 1 + per_row or (self.layout == "frames" and h.shape[0] % T):
                raise ValueError(
                    f"video tokens of shape {tuple(h.shape)} do not fit a class token plus a {grid} grid "
                    f"in the {self.layout!r} layout"
                )
        return msta_adapter(
            h,
            self.down.weight,
            self.down.bias,
            self.shared.weight,
            self.shared.bias,
            self.up.weight,
            self.up.bias,
            conv.weight if conv is not None else None,
            conv.bias if conv is not None else None,
            scale=self.scale,
            grad_scale=self.grad_scale,
            residual=residual,
            grid=grid,
            layout=self.layout or "viclip",
            has_cls=True,
            dropout_p=self.dropout,
            training=self.training,
        )


class MSTAAdapters(nn.Module):
    """Container: ``shared.{j}``, ``vision.{i}``, ``text.{i}`` (i, j: 0-based block indices)."""

    def __init__(self):
        super().__init__()
        self.shared = nn.ModuleDict()
        self.vision = nn.ModuleDict()
        self.text = nn.ModuleDict()


def adapted_blocks(tower: Tower, start_layer: int) -> range:
    n = len(tower.blocks)
    if not 1 <= start_layer <= n:
        raise ValueError(f"start_layer {start_layer} is out of range for the {tower.name} tower's {n} blocks (1..{n})")
    return range(start_layer - 1, n)


def build_msta(vision: Tower, text: Tower, cfg: PatchConfig) -> MSTAAdapters:
    """Adapters for blocks ``start_layer..L`` of each tower. With towers of different depth (L/14:
    24 video blocks, 12 text blocks) depths pair from the top and unpaired blocks get a shared layer
    of their own."""
    adapters = MSTAAdapters()
    offset = len(vision.blocks) - len(text.blocks)  # text block i pairs with vision block i + offset
    if "vision" in cfg.towers:
        for i in adapted_blocks(vision, cfg.start_layer):
            adapters.shared[str(i)] = MSTASharedLayer(cfg.dim, cfg.linear_init)
            adapters.vision[str(i)] = MSTAAdapter(vision.width, adapters.shared[str(i)], cfg, vision.layout)
    if "text" in cfg.towers:
        for i in adapted_blocks(text, cfg.start_layer):
            key = str(i + offset)
            if not cfg.share or key not in adapters.shared:
                key = key if key not in adapters.shared else f"text{i}"
                adapters.shared[key] = MSTASharedLayer(cfg.dim, cfg.linear_init)
            adapters.text[str(i)] = MSTAAdapter(text.width, adapters.shared[key], cfg)
    return adapters


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The token tensor a block was called with (ours: x; open_clip: q_x)."""
    if args:
        return args[0]
    for name in ("x", "q_x", "hidden_states"):
        if name in kwargs:
            return kwargs[name]
    raise TypeError("cannot find the block's token input among its arguments")


def msta_block_hook(adapter: MSTAAdapter, tower: Tower, grid: VideoGrid | None, enabled):
    """Forward hook: block output + s * A(ln_1(block input)), accumulated by the op."""

    def hook(block, args, kwargs, out):
        if not enabled():
            return out
        h = block.ln_1(block_input(args, kwargs))
        if tower.seq_first:
            h, out = h.transpose(0, 1), out.transpose(0, 1)
        y = adapter(h, out, grid.shape if grid is not None else None)
        return y.transpose(0, 1) if tower.seq_first else y

    return hook


def grid_pre_hook(grid: VideoGrid, tower: Tower, frames_per_clip):
    """Reads the (T, H, W) patch grid off the vision tower's input: (B, 3, T, H, W) for ViCLIP,
    (B*T, 3, H, W) for frame-wise CLIP, where T comes from ``frames_per_clip()``."""

    def hook(module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        p = tower.patch_size
        if tower.layout == "viclip":
            grid.frames, grid.height, grid.width = x.shape[2], x.shape[-2] // p, x.shape[-1] // p
        else:
            grid.frames, grid.height, grid.width = frames_per_clip(), x.shape[-2] // p, x.shape[-1] // p

    return hook
