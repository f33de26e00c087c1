"""M2-CLIP's adapters (method.md section 5): the TED-Adapter in the vision blocks, the frame-level
temporal adapter, the text adapters and the visual classification head.

TED-Adapter, on the residual stream ``x`` before a block's MLP (the SSv2 variant: also before its
attention), bottleneck Ca:

    a      = fc1_te(x)                                     all tokens        (.., Ca)
    te     = fc2_te(TConv_t(a))                            TConv_t: depthwise over time, kernel 3
    d_t    = fc1_td(x_t - x_{t-1})  (x_{-1} = x_0)          patch tokens      (.., Ca)
    td     = fc2_td(SConv(d))                              SConv: depthwise (1, 3, 3) over the grid
    x'     = x + te  (+ td on the patch tokens)

Convolutions and fc biases start at zero, so the patched model starts equal to the original. On
frame-wise CLIP the tokens are frame rows (B*T, 1 + H*W, C) and the class token of each frame has a
time axis of its own; on ViCLIP they are one sequence (B, 1 + H*W*T, C), token ``1 + n*T + t`` being
patch n of frame t, and the single class token has no time axis: its temporal convolution sees one
frame (the centre tap and the bias, as zero padding gives).

The adapters attach with hooks, as MSTA's: a pre-hook on the block (the pre-attention adapter and
the stream value ``x``) and a forward hook on its attention, whose output ``attn_out`` becomes
``attn_out + delta(x + attn_out)``, which is the same as adapting ``x + attn_out`` before the MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msta_fast.adapters.config import PatchConfig
from msta_fast.adapters.functional import check_dwconv_call, temporal_dwconv_ref
from msta_fast.adapters.msta import adapted_blocks, block_input, grid_pre_hook
from msta_fast.adapters.towers import Tower, VideoGrid
from msta_fast.ops.dispatch import temporal_dwconv

TEMPORAL_KERNEL = (3, 1, 1)
DIFFERENCE_KERNEL = (1, 3, 3)


def _fits_fast_op(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid, layout: str) -> bool:
    """Whether ``msta_fast.ops.temporal_dwconv`` takes these shapes (:func:`check_dwconv_call`). Every call
    of the TED-Adapter fits (the frame-row TConv on a (T, 1, L) grid, the ViCLIP patch slice ``a[:, 1:]``
    and the (1, 3, 3) SConv); anything else keeps the reference."""
    try:
        check_dwconv_call(u, weight, bias, grid, layout)
    except (ValueError, TypeError):
        return False
    return True


def depthwise_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid, layout: str) -> torch.Tensor:
    """Depthwise 3-D convolution of tokens over their (T, H, W) grid (``temporal_dwconv_ref``'s
    contract): u (B, H*W*T, C) for "viclip", (B*T, H*W, C) for "frames".

    Shapes that fit (see :func:`_fits_fast_op`) go to ``msta_fast.ops.temporal_dwconv``, which picks
    the backend as for the MSTA op (Triton on a GPU, else the C++ extension if built, else the
    reference); others to the reference."""
    if _fits_fast_op(u, weight, bias, grid, layout):
        return temporal_dwconv(u, weight, bias, grid, layout)
    return temporal_dwconv_ref(u, weight, bias, grid, layout)


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
        T, H, W = grid
        rows, L, _ = x.shape
        per_row = H * W * T if self.layout == "viclip" else H * W
        if L != 1 + per_row or (self.layout == "frames" and rows % T):
            raise ValueError(
                f"video tokens of shape {tuple(x.shape)} do not fit a class token plus a {grid} grid "
                f"in the {self.layout!r} layout"
            )
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
    head) and ``decoder`` (the trainable parts of the MLM head), those that apply. ``features``
    holds what the last video forward exposed for the heads."""

    def __init__(self):
        super().__init__()
        self.vision = nn.ModuleDict()
        self.vision_attn = nn.ModuleDict()
        self.text = nn.ModuleDict()
        self.text_attn = nn.ModuleDict()
        self.frame: FrameTemporalAdapter | None = None
        self.head: VisualHead | None = None
        self.decoder: nn.Module | None = None  # msta_fast.m2clip.decoder.MLMDecoder
        self.features: dict[str, torch.Tensor] = {}


def _text_blocks(text: Tower, layers) -> range:
    n = len(text.blocks)
    if layers == "all":
        return range(n)
    if layers > n:
        raise ValueError(f"text_layers {layers} is more than the text tower's {n} blocks")
    return range(n - layers, n)


def _embed_dim(vision: Tower) -> int:
    proj = getattr(vision.grid_module, "proj", None)
    return proj.shape[1] if proj is not None else vision.width


def build_m2clip(vision: Tower, text: Tower, cfg: PatchConfig) -> M2CLIPAdapters:
    adapters = M2CLIPAdapters()
    if "vision" in cfg.towers:
        for i in adapted_blocks(vision, cfg.start_layer):
            adapters.vision[str(i)] = TEDAdapter(vision.width, cfg.dim, vision.layout)
            if cfg.pre_attn:
                adapters.vision_attn[str(i)] = TEDAdapter(vision.width, cfg.dim, vision.layout)
        # Per-frame embeddings exist only in frame-wise CLIP; ViCLIP pools one class token over
        # all frames, so the frame-level adapter has nothing to act on there.
        if cfg.frame_adapter and vision.layout == "frames":
            adapters.frame = FrameTemporalAdapter(_embed_dim(vision))
    if "text" in cfg.towers:
        for i in _text_blocks(text, cfg.text_layers):
            adapters.text[str(i)] = TextAdapter(text.width, cfg.dim, cfg.zero_init_text)
            if cfg.pre_attn:
                adapters.text_attn[str(i)] = TextAdapter(text.width, cfg.dim, cfg.zero_init_text)
    if cfg.num_classes is not None:
        adapters.head = VisualHead(vision.width, cfg.num_classes, cfg.head_dropout)
    if cfg.mlm_vocab is not None:
        from msta_fast.m2clip.decoder import MLMDecoder  # the decoder package builds on these adapters

        adapters.decoder = MLMDecoder(text.width, _embed_dim(vision), cfg.mlm_vocab, cfg.dim, cfg.zero_init_text)
    return adapters


def _with_input(args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (x, *args[1:]), kwargs
    for name in ("x", "q_x", "hidden_states"):
        if name in kwargs:
            return args, {**kwargs, name: x}
    raise TypeError("cannot find the block's token input among its arguments")


def _apply(adapter, x: torch.Tensor, tower: Tower, grid: VideoGrid | None) -> torch.Tensor:
    """The adapter's increment for a block's token tensor in the tower's own (L, B, D) or (B, L, D) order."""
    xb = x.transpose(0, 1) if tower.seq_first else x
    d = adapter.delta(xb, grid.shape if grid is not None else None)
    return d.transpose(0, 1) if tower.seq_first else d


def block_pre_hook(pre_attn, slot: dict, tower: Tower, grid: VideoGrid | None, enabled):
    """Block pre-hook: the pre-attention adapter (if any), and the stream value kept for the attention hook."""

    def hook(block, args, kwargs):
        if not enabled():
            return None
        x = block_input(args, kwargs)
        if pre_attn is not None:
            x = x + _apply(pre_attn, x, tower, grid)
            args, kwargs = _with_input(args, kwargs, x)
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


def attach_m2clip(model: nn.Module, adapters: M2CLIPAdapters, vision: Tower, text: Tower, cfg: PatchConfig,
                  grid: VideoGrid, enabled) -> list:
    """Registers the hooks; returns their handles (removed by ``unpatch``). Forward hooks are prepended, as
    MSTA's, so that they run before a wrapper's own post-forward hooks."""
    handles = []
    for tower, pre_mlp, pre_attn, tower_grid in (
        (vision, adapters.vision, adapters.vision_attn, grid),
        (text, adapters.text, adapters.text_attn, None),
    ):
        for i, adapter in pre_mlp.items():
            block, slot = tower.blocks[int(i)], {}
            hook = block_pre_hook(pre_attn[i] if i in pre_attn else None, slot, tower, tower_grid, enabled)
            handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
            hook = attention_hook(adapter, slot, tower, tower_grid, enabled)
            handles.append(block.attn.register_forward_hook(hook, prepend=True))
    visual = vision.grid_module
    frames = lambda: getattr(model, "frames_per_clip", None) or cfg.num_frames or 1  # noqa: E731
    handles.append(visual.register_forward_pre_hook(grid_pre_hook(grid, vision, frames), with_kwargs=True))
    handles.append(visual.register_forward_pre_hook(lambda module, args: adapters.features.clear()))
    handles.append(visual.ln_post.register_forward_hook(_class_token_hook(adapters, vision, grid)))
    if vision.layout == "frames":
        handles.append(visual.register_forward_hook(_frame_embedding_hook(adapters, grid, enabled), prepend=True))
    else:
        handles.append(vision.blocks[-1].register_forward_hook(_last_tokens_hook(adapters, vision), prepend=True))
    if adapters.decoder is not None:
        handles.append(adapters.decoder.attach(text.blocks[-1]))
    return handles


def _layer_norm(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    # Called inside a hook of ``ln`` itself: the functional form does not re-enter the hook.
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _class_token_hook(adapters: M2CLIPAdapters, vision: Tower, grid: VideoGrid):
    """Keeps the frame-averaged class token after ``ln_post``: (B, width). ViCLIP's single class
    token is ``ln_post``'s own output; frame-wise CLIP averages the frames' class tokens first."""

    def hook(ln_post, args, out):
        if vision.layout == "frames":
            x = args[0]
            cls = x[:, 0] if x.ndim == 3 else x
            out = _layer_norm(ln_post, cls.reshape(-1, grid.frames, cls.shape[-1]).mean(1))
        adapters.features["cls"] = out[:, 0] if out.ndim == 3 else out

    return hook


def _frame_embedding_hook(adapters: M2CLIPAdapters, grid: VideoGrid, enabled):
    """Frame-wise CLIP: the frame-level temporal adapter on the per-frame embeddings (B*T, E); keeps them."""

    def hook(visual, args, out):
        pooled = out[0] if isinstance(out, tuple) else out
        frames = pooled.reshape(-1, grid.frames, pooled.shape[-1])
        if adapters.frame is not None and enabled():
            frames = adapters.frame(frames)
        adapters.features["frames"] = frames
        pooled = frames.reshape(pooled.shape)
        return (pooled, *out[1:]) if isinstance(out, tuple) else pooled

    return hook


def _last_tokens_hook(adapters: M2CLIPAdapters, vision: Tower):
    def hook(block, args, out):
        adapters.features["tokens"] = out.transpose(0, 1) if vision.seq_first else out

    return hook


def frame_embeddings(model: nn.Module, adapters: M2CLIPAdapters, grid: VideoGrid) -> torch.Tensor:
    """Per-frame visual embeddings (B, T, E) of the last video forward.

    Frame-wise CLIP: its frame embeddings (after the frame-level adapter). ViCLIP has none: each
    frame's patch tokens of the last block are averaged, then ``ln_post`` and ``proj`` as for the
    class token.
    """
    if "frames" in adapters.features:
        return adapters.features["frames"]
    if "tokens" not in adapters.features:
        raise RuntimeError("no video forward of the patched model has run yet")
    visual = model.vision_encoder
    T, H, W = grid.shape
    tokens = adapters.features["tokens"][:, 1:]
    # In the weights' dtype: the heads may run outside the autocast region of the forward.
    per_frame = tokens.reshape(tokens.shape[0], H * W, T, -1).mean(1).to(visual.proj.dtype)
    return _layer_norm(visual.ln_post, per_frame) @ visual.proj
