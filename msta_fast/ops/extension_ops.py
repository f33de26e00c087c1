"""The C++/CUDA extension's ops (``torch.ops.msta_fast_ext``) bound as differentiable functions.

:func:`msta_adapter_ext` (the MSTA adapter) and :func:`token_dwconv_ext` (the depthwise token
convolution alone) have the signatures and semantics of :func:`msta_fast.ops.reference.msta_adapter_ref`
and :func:`msta_fast.ops.reference.token_dwconv_ref`. The C++ side (``csrc/msta_adapter.cpp``) defines
``adapter_fwd`` / ``adapter_bwd`` and ``tconv_fwd`` / ``tconv_bwd`` with ``TORCH_LIBRARY``; this module
registers their fake (meta) implementations, for ``torch.compile``, and their autograd formulas, once
the library is loaded (:mod:`msta_fast.ops.extension` builds and loads it). Dropout: the keep mask
is drawn in Python from a seeded generator (:func:`ext_dropout_keep`), so the same seed gives the
same mask here and in the reference.
"""

from __future__ import annotations

import threading

import torch

from msta_fast.ops import extension
from msta_fast.ops.reference import check_adapter_call, check_token_dwconv_call

LAYOUT_CODES = {"viclip": 0, "frames": 1}
_registered = False
_lock = threading.Lock()


def _register() -> None:
    """Load the library (building it if needed) and register fake kernels and autograd, once."""
    global _registered
    with _lock:
        if _registered:
            return
        extension.load()

        @torch.library.register_fake("msta_fast_ext::adapter_fwd")
        def _(x, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b, residual, keep, scale, dropout_p,
              grid, layout, has_cls, tokens, grad_scale):
            r = down_w.shape[0]
            out_dtype = x.dtype if residual is None else residual.dtype
            return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(x.shape[0], r), x.new_empty(x.shape[0], r)

        @torch.library.register_fake("msta_fast_ext::adapter_bwd")
        def _(grad, x, z1, h, down_w, has_down_b, shared_w, has_shared_b, up_w, up_b, conv_w, has_conv_b, scale,
              grad_scale, dropout_p, grid, layout, has_cls, tokens):
            r = down_w.shape[0]
            c = x.shape[1]

            def maybe(present: bool, *shape: int) -> torch.Tensor:
                return x.new_empty(shape) if present else x.new_empty(0)

            return [
                torch.empty_like(x), torch.empty_like(down_w), maybe(has_down_b, r), torch.empty_like(shared_w),
                maybe(has_shared_b, r), torch.empty_like(up_w), maybe(up_b is not None, c),
                torch.empty_like(conv_w) if conv_w is not None else x.new_empty(0),
                maybe(has_conv_b and conv_w is not None, c),
            ]

        def setup_context(ctx, inputs, output):
            (x, down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b, residual, keep, scale, dropout_p,
             grid, layout, has_cls, tokens, grad_scale) = inputs
            _, z1, h = output
            # z1 and h are saved activations, not results: no zero-filled (tokens, r) gradients for them.
            ctx.mark_non_differentiable(z1, h)
            ctx.set_materialize_grads(False)
            ctx.save_for_backward(x, z1, h, down_w, shared_w, up_w, up_b, conv_w)
            ctx.flags = (down_b is not None, shared_b is not None, conv_b is not None, residual is not None)
            ctx.options = (scale, grad_scale, dropout_p if keep is not None else 0.0, grid, layout, has_cls, tokens)

        def backward(ctx, grad_out, grad_z1, grad_h):
            x, z1, h, down_w, shared_w, up_w, up_b, conv_w = ctx.saved_tensors
            has_down_b, has_shared_b, has_conv_b, has_residual = ctx.flags
            scale, grad_scale, dropout_p, grid, layout, has_cls, tokens = ctx.options
            grads = torch.ops.msta_fast_ext.adapter_bwd(
                grad_out.contiguous(), x, z1, h, down_w, has_down_b, shared_w, has_shared_b, up_w, up_b, conv_w,
                has_conv_b, scale, grad_scale, dropout_p, grid, layout, has_cls, tokens,
            )
            present = (True, True, has_down_b, True, has_shared_b, True, up_b is not None, conv_w is not None,
                       has_conv_b and conv_w is not None)
            grads = [g if p else None for g, p in zip(grads, present, strict=True)]
            return (*grads, grad_out if has_residual else None, None, None, None, None, None, None, None, None)

        torch.library.register_autograd("msta_fast_ext::adapter_fwd", backward, setup_context=setup_context)
        _register_tconv()
        _registered = True


def _register_tconv() -> None:
    """Fake kernels and autograd of the token convolution alone (``tconv_fwd`` / ``tconv_bwd``)."""

    @torch.library.register_fake("msta_fast_ext::tconv_fwd")
    def _(u, weight, bias, grid, layout, has_cls, tokens, identity=True):
        return u.new_empty(u.shape)

    @torch.library.register_fake("msta_fast_ext::tconv_bwd")
    def _(grad, u, weight, grid, layout, has_cls, tokens, identity=True):
        taps = weight.shape[2] * weight.shape[3] * weight.shape[4]
        fp32 = dict(dtype=torch.float32)
        return u.new_empty(u.shape), u.new_empty(weight.shape[0], taps, **fp32), u.new_empty(weight.shape[0], **fp32)

    def setup_context(ctx, inputs, output):
        u, weight, bias, grid, layout, has_cls, tokens, identity = inputs
        ctx.save_for_backward(u, weight)
        ctx.options = (grid, layout, has_cls, tokens, identity)
        ctx.bias_dtype = bias.dtype if bias is not None else None

    def backward(ctx, grad):
        u, weight = ctx.saved_tensors
        du, dw, db = torch.ops.msta_fast_ext.tconv_bwd(grad.contiguous(), u, weight, *ctx.options)
        d_bias = db.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return du, dw.reshape(weight.shape).to(weight.dtype), d_bias, None, None, None, None, None

    torch.library.register_autograd("msta_fast_ext::tconv_fwd", backward, setup_context=setup_context)


def token_dwconv_ext(
    u_patch: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid: tuple[int, int, int],
    layout: str = "viclip",
) -> torch.Tensor:
    """Signature and semantics of :func:`msta_fast.ops.reference.token_dwconv_ref` with the extension's
    token convolution (``tconv_fwd`` without its identity term and class token); differentiable.

    u_patch: (B, H*W*T, C) for ``"viclip"``, (B*T, H*W, C) for ``"frames"`` -> the same shape."""
    _register()
    check_token_dwconv_call(u_patch, weight, bias, grid, layout)
    rows, tokens, C = u_patch.shape
    out = torch.ops.msta_fast_ext.tconv_fwd(u_patch.reshape(rows * tokens, C), weight, bias, [int(g) for g in grid],
                                            LAYOUT_CODES[layout], False, tokens, False)
    return out.reshape(u_patch.shape)


def ext_dropout_keep(seed: int, rows: int, dim: int, dropout_p: float, device: torch.device | str) -> torch.Tensor:
    """The boolean keep mask (rows, dim) that :func:`msta_adapter_ext` draws for ``seed``."""
    gen = torch.Generator(device=device).manual_seed(int(seed))
    return torch.rand(rows, dim, generator=gen, device=device) >= dropout_p


def msta_adapter_ext(
    x: torch.Tensor,
    down_w: torch.Tensor,
    down_b: torch.Tensor | None,
    shared_w: torch.Tensor,
    shared_b: torch.Tensor | None,
    up_w: torch.Tensor,
    up_b: torch.Tensor | None,
    conv_w: torch.Tensor | None = None,
    conv_b: torch.Tensor | None = None,
    *,
    scale: float = 1.0,
    grad_scale: bool = True,
    residual: torch.Tensor | None = None,
    grid: tuple[int, int, int] | None = None,
    layout: str = "viclip",
    has_cls: bool = True,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
) -> torch.Tensor:
    """``residual + s * A(x)`` with the extension. x: (B, L, C) -> (B, L, C). Semantics of ``msta_adapter_ref``."""
    _register()
    B, L, C = x.shape
    check_adapter_call(layout, conv_w, grid)
    p = float(dropout_p) if training else 0.0
    keep = None
    if p > 0:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed
        keep = ext_dropout_keep(seed, B * L, down_w.shape[0], p, x.device)
    out, _, _ = torch.ops.msta_fast_ext.adapter_fwd(
        x.reshape(B * L, C).contiguous(), down_w, down_b, shared_w, shared_b, up_w, up_b, conv_w, conv_b,
        residual.reshape(B * L, C) if residual is not None else None, keep, float(scale), p,
        list(grid) if grid is not None else [1, 1, 1], LAYOUT_CODES[layout], bool(has_cls), L, bool(grad_scale),
    )
    return out.reshape(B, L, C)
