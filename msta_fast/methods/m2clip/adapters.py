"""M2-CLIP's adapter modules (method.md section 5): the TED-Adapter in the vision blocks, the text adapters, the
frame-level temporal adapter and the visual classification head.

TED-Adapter, on the residual stream ``x`` before a block's MLP (the SSv2 variant: also before its attention),
bottleneck Ca:

    a      = fc1_te(x)                                     all tokens        (.., Ca)
    te     = fc2_te(TConv_t(a))                            TConv_t: depthwise over time, kernel 3
    d_t    = fc1_td(x_t - x_{t-1})  (x_{-1} = x_0)          patch tokens      (.., Ca)
    td     = fc2_td(SConv(d))                              SConv: depthwise (1, 3, 3) over the grid
    x'     = x + te  (+ td on the patch tokens)

Convolutions and fc biases start at zero, so the patched model starts equal to the original. On frame-wise CLIP
the tokens are frame rows (B*T, 1 + H*W, C) and the class token of each frame has a time axis of its own; on
ViCLIP they are one sequence (B, 1 + H*W*T, C), token ``1 + n*T + t`` being patch n of frame t, and the single
class token has no time axis: its temporal convolution sees one frame (the centre tap and the bias, as zero
padding gives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.methods.msta.modules import check_grid
from msta_fast.methods.towers import VideoGrid
from msta_fast.ops import token_dwconv
from msta_fast.ops.reference import check_token_dwconv_call, token_dwconv_ref

TEMPORAL_KERNEL = (3, 1, 1)
DIFFERENCE_KERNEL = (1, 3, 3)


def _fits_fast_op(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid, layout: str) -> bool:
    """Whether ``msta_fast.ops.token_dwconv`` takes these shapes (:func:`check_token_dwconv_call`). Every call
    of the TED-Adapter fits (the frame-row TConv on a (T, 1, L) grid, the ViCLIP patch slice ``a[:, 1:]``
    and the (1, 3, 3) SConv); anything else keeps the reference."""
    try:
        check_token_dwconv_call(u, weight, bias, grid, layout)
    except (ValueError, TypeError):
        return False
    return True


def depthwise_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid, layout: str) -> torch.Tensor:
    """Depthwise 3-D convolution of tokens over their (T, H, W) grid (``token_dwconv_ref``'s
    contract): u (B, H*W*T, C) for "viclip", (B*T, H*W, C) for "frames".

    Shapes that fit (see :func:`_fits_fast_op`) go to ``msta_fast.ops.token_dwconv``, which picks
    the backend as for the MSTA op (Triton on a GPU, else the C++ extension if built, else the
    reference); others to the reference."""
    if _fits_fast_op(u, weight, bias, grid, layout):
        return token_dwconv(u, weight, bias, grid, layout)
    return token_dwconv_ref(u, weight, bias, grid, layout)


def time_difference(u: torch.Tensor, grid: tuple[int, int, int], layout: str) -> torch.Tensor:
    """``d_t = u_t - u_{t-1}`` with ``d_0 = 0``, on patch tokens of ``layout`` (shape kept)."""
    T, H, W = grid
    C = u.shape[-1]
    if layout == "viclip":
        v = u.reshape(-1, H * W, T, C)
        d = torch.cat([torch.zeros_like(v[:, :, :1]), v[:, :, 1:] - v[:, :, :-1]], dim=2)
    else:
        v = u.reshape(-1, T, H * W, C)
        d = torch.cat([torch.zeros_like(v[:, :1]), v[:, 1:] - v[:, :-1]], dim=1)
    return d.reshape(u.shape)


def _depthwise(channels: int, kernel: tuple[int, int, int]) -> nn.Conv3d:
    conv = nn.Conv3d(channels, channels, kernel, padding=tuple(k // 2 for k in kernel), groups=channels)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(n_in: int, n_out: int, zero_weight: bool = False) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)  # PyTorch's default weight init, as the released code; zero bias
    if zero_weight:
        nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class TEDAdapter(nn.Module):
    """Temporal enhancement + temporal difference at one place of one vision block."""

    def __init__(self, width: int, dim: int, layout: str):
        super().__init__()
        if layout not in ("viclip", "frames"):
            raise ValueError(f"unknown token layout {layout!r}")
        self.layout = layout
        self.te_fc1, self.te_fc2 = _linear(width, dim), _linear(dim, width)
        self.te_conv = _depthwise(dim, TEMPORAL_KERNEL)
        self.td_fc1, self.td_fc2 = _linear(width, dim), _linear(dim, width)
        self.td_conv = _depthwise(dim, DIFFERENCE_KERNEL)

    def delta(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """x: (B, 1 + H*W*T, C) ("viclip") or (B*T, 1 + H*W, C) ("frames") -> the increment, same shape."""
        check_grid(x, grid, self.layout)
        T, L = grid[0], x.shape[1]
        dim = self.te_fc1.out_features
        # One GEMM for both down-projections; fc1_td's bias is added after the difference
        # (fc1_td(x_t - x_{t-1}) = W x_t - W x_{t-1} + b).
        h = F.linear(x, torch.cat([self.te_fc1.weight, self.td_fc1.weight]))
        a = h[..., :dim] + self.te_fc1.bias
        g = h[:, 1:, dim:]
        if self.layout == "frames":  # every token position, class token included, has T frames
            te = depthwise_conv(a, self.te_conv.weight, self.te_conv.bias, (T, 1, L), "frames")
        else:
            centre = self.te_conv.weight[:, 0, TEMPORAL_KERNEL[0] // 2, 0, 0]
            te_cls = a[:, :1] * centre + self.te_conv.bias
            te_patch = depthwise_conv(a[:, 1:], self.te_conv.weight, self.te_conv.bias, grid, "viclip")
            te = torch.cat([te_cls, te_patch], dim=1)
        d = time_difference(g, grid, self.layout) + self.td_fc1.bias
        td = self.td_fc2(depthwise_conv(d, self.td_conv.weight, self.td_conv.bias, grid, self.layout))
        y = self.te_fc2(te)
        return torch.cat([y[:, :1], y[:, 1:] + td], dim=1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        return x + self.delta(x, grid)


class TextAdapter(nn.Module):
    """Residual ``fc2(GELU(fc1(x)))`` on text tokens (B, L, D), bottleneck Ca."""

    def __init__(self, width: int, dim: int, zero_init: bool = True):
        super().__init__()
        self.fc1, self.fc2 = _linear(width, dim), _linear(dim, width, zero_weight=zero_init)

    def delta(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta(x)


class FrameTemporalAdapter(nn.Module):
    """Residual adapter on per-frame embeddings (B, T, E): E -> E/2, depthwise conv over T (kernel 3),
    E/2 -> E. Zero convolution and biases: it starts as the identity."""

    def __init__(self, embed_dim: int):
        super().__init__()
        dim = embed_dim // 2
        self.fc1, self.fc2 = _linear(embed_dim, dim), _linear(dim, embed_dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1, groups=dim)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, E) -> (B, T, E)."""
        h = self.conv(self.fc1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.fc2(h)


class VisualHead(nn.Module):
    """Classification of the frame-averaged class token after ``ln_post``: dropout, Linear(width, C).
    It knows only the training classes: it cannot score novel ones."""

    def __init__(self, width: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        nn.init.normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, cls: torch.Tensor, item_seeds: torch.Tensor | None = None) -> torch.Tensor:
        """cls: (B, width) -> logits (B, num_classes). With ``item_seeds`` (B,) each row's dropout mask comes
        from its own seed (the same in any batch and on any number of processes)."""
        p = self.dropout.p
        if item_seeds is None or not self.training or p == 0:
            return self.fc(self.dropout(cls))
        # salted, so that this mask is not the one the same seed drew for the item's augmentation or masks
        rows = [torch.rand(cls.shape[1], generator=torch.Generator().manual_seed(int(s) ^ 0x5EED_DF0D))
                for s in item_seeds.tolist()]
        keep = (torch.stack(rows) >= p).to(cls.device, cls.dtype)
        return self.fc(cls * keep / (1 - p))


class M2CLIPAdapters(nn.Module):
    """Container: ``vision.{i}`` / ``vision_attn.{i}`` (TED before the MLP / attention of block i),
    ``text.{i}`` / ``text_attn.{i}``, ``frame`` (frame-level temporal adapter), ``head`` (visual
    head) and ``decoder`` (the trainable parts of the MLM head), those that apply. ``grid`` is the
    (T, H, W) patch grid of the current video forward (kept up to date by a pre-hook)."""

    def __init__(self):
        super().__init__()
        self.vision = nn.ModuleDict()
        self.vision_attn = nn.ModuleDict()
        self.text = nn.ModuleDict()
        self.text_attn = nn.ModuleDict()
        self.frame: FrameTemporalAdapter | None = None
        self.head: VisualHead | None = None
        self.decoder: nn.Module | None = None  # msta_fast.methods.m2clip.decoder.MLMDecoder
        self.grid = VideoGrid()
