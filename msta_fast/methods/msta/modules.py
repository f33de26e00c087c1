"""MSTA's modules (method.md section 2): ``x_j = Block_j(x_{j-1}) + s * A_j(ln_1_j(x_{j-1}))``.

Per depth one shared layer ``S_j`` used by both towers; the video adapter adds a depthwise temporal convolution of
its up-projection over the (T, H, W) patch grid. The math is :func:`msta_fast.ops.reference.msta_adapter_ref`;
these modules hold the weights and call the op through :func:`msta_fast.ops.msta_adapter`, which picks the fast
backend.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msta_fast.methods.msta.config import MSTAConfig
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
    """One tower's adapter at one depth: Down (D -> r), the shared layer, Up (r -> D) and, for the video tower,
    the depthwise temporal convolution ``tconv`` over the patch grid.

    The shared layer is referenced, not registered, so that it has one name (``shared.{j}`` of the container)
    and one entry in the state dict although two towers use it.
    """

    def __init__(self, width: int, shared: MSTASharedLayer, config: MSTAConfig, layout: str | None = None):
        super().__init__()
        r = config.dim
        self.down = nn.Linear(width, r)
        self.up = nn.Linear(r, width)
        init_linear(self.down, config.linear_init)
        init_linear(self.up, config.linear_init)
        self._shared = (shared,)
        self.layout = layout
        self.scale, self.grad_scale, self.dropout = config.scale, config.grad_scale, config.dropout
        if layout is not None:
            k = config.temporal_kernel
            self.tconv = nn.Conv3d(width, width, k, padding=tuple(s // 2 for s in k), groups=width)
            if config.conv_init == "zeros":
                nn.init.zeros_(self.tconv.weight)
            elif config.conv_init == "kaiming":
                nn.init.kaiming_normal_(self.tconv.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(self.tconv.weight, std=1.0 / math.prod(k))
            nn.init.zeros_(self.tconv.bias)

    @property
    def shared(self) -> MSTASharedLayer:
        return self._shared[0]

    def forward(self, h: torch.Tensor, residual: torch.Tensor, grid: tuple[int, int, int] | None = None):
        """h: ln_1 of the block input (B, L, D); residual: the block output (B, L, D) -> (B, L, D)."""
        conv = getattr(self, "tconv", None)
        if conv is not None:
            check_grid(h, grid, self.layout)
        return msta_adapter(
            h, self.down.weight, self.down.bias, self.shared.weight, self.shared.bias, self.up.weight, self.up.bias,
            conv.weight if conv is not None else None, conv.bias if conv is not None else None,
            scale=self.scale, grad_scale=self.grad_scale, residual=residual, grid=grid,
            layout=self.layout or "viclip", has_cls=True, dropout_p=self.dropout, training=self.training,
        )


def check_grid(tokens: torch.Tensor, grid: tuple[int, int, int], layout: str) -> None:
    """Video tokens (rows, 1 + N, D) must be a class token plus the (T, H, W) patch grid of ``layout``."""
    T, H, W = grid
    per_row = H * W * T if layout == "viclip" else H * W
    if tokens.shape[1] != 1 + per_row or (layout == "frames" and tokens.shape[0] % T):
        hint = ""
        if layout == "viclip" and tokens.shape[1] < 1 + per_row:
            hint = (f": {tokens.shape[1] - 1} of the grid's {per_row} patch tokens, as when the video tower masks "
                    "tokens. The official ViCLIP's encode_vision(x) defaults to test=False, which keeps only 10% of "
                    "them (masking_prob 0.9, its pre-training setting), in eval mode too. The temporal adapters "
                    "(MSTA's convolution, M2-CLIP's TED-Adapters) need the whole (T, H, W) grid: call "
                    "encode_vision(x, test=True), or set model.masking_prob = 0.0 to turn the masking off for every "
                    "call (LoRA and AdaptFormer, which adapt each token on its own, do train with masking)")
        raise ValueError(f"video tokens of shape {tuple(tokens.shape)} do not fit a class token plus a {tuple(grid)} "
                         f"grid in the {layout!r} layout{hint}")


class MSTAAdapters(nn.Module):
    """Container: ``shared.{j}``, ``vision.{i}``, ``text.{i}`` (i, j: 0-based block indices)."""

    def __init__(self):
        super().__init__()
        self.shared = nn.ModuleDict()
        self.vision = nn.ModuleDict()
        self.text = nn.ModuleDict()
