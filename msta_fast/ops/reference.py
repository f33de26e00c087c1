"""Plain PyTorch reference of one MSTA adapter application: the ground truth of every fast path.

Math (method.md section 2), for the normalised block input ``x`` (``ln_1`` of the block input):

    h   = dropout(ReLU(S(ReLU(Down(x)))))          S is the shared layer of this depth
    u   = Up(h)
    A_v = u + TConv(u)   on patch tokens,  A_v = u   on class tokens        (video tower)
    A_t = u                                                                   (text tower)
    out = residual + s * A

``TConv`` is a depthwise 3-D convolution (kernel (kT, kH, kW), "same" padding, with bias) over
the (T, H, W) grid of the patch tokens (:func:`token_dwconv_ref`; M2-CLIP uses it alone, with
(3, 1, 1) and (1, 3, 3) kernels). Two token layouts are supported:

- ``"viclip"``: ``x`` is (B, 1 + H*W*T, C); the patch tokens are patch-major, time-minor, so
  token ``1 + n*T + t`` is patch ``n`` of frame ``t``.
- ``"frames"``: ``x`` is (B*T, 1 + H*W, C), one row per frame (open_clip's frame-wise CLIP);
  the frames of a clip are ``T`` consecutive batch rows.

Gradient scaling (MMA's trick): the output is ``s * A`` but the adapter's parameters get
gradients as if ``s`` were 1; the gradient into ``x`` through the adapter is the true one.

The fast paths (the Triton kernels in :mod:`msta_fast.kernels`, the C++/CUDA extension in
:mod:`msta_fast.ops.extension_ops`) share this module's argument checks and are tested against its
functions; :mod:`msta_fast.ops.dispatch` runs them under the ``torch`` backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAYOUTS = ("viclip", "frames")


class _ScaleForwardOnly(torch.autograd.Function):
    """y = s * a in the forward pass; the backward passes the gradient on unscaled."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, scale: float) -> torch.Tensor:
        return a * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _ScaleBackwardOnly(torch.autograd.Function):
    """y = x in the forward pass; the backward multiplies the gradient by s."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_adapter_input(x: torch.Tensor, scale: float, grad_scale: bool) -> torch.Tensor:
    """With gradient scaling, the adapter input carries the factor ``s`` of the backward pass."""
    return _ScaleBackwardOnly.apply(x, scale) if grad_scale else x


def scale_adapter_output(a: torch.Tensor, scale: float, grad_scale: bool) -> torch.Tensor:
    """``s * a``; with gradient scaling the parameters see the gradient as if ``s`` were 1."""
    return _ScaleForwardOnly.apply(a, scale) if grad_scale else a * scale


def patch_grid_view(u_patch: torch.Tensor, grid: tuple[int, int, int], layout: str) -> torch.Tensor:
    """Patch tokens -> (B, C, T, H, W) view for a 3-D convolution.

    u_patch: (B, H*W*T, C) for ``"viclip"``, (B*T, H*W, C) for ``"frames"``.
    """
    T, H, W = grid
    C = u_patch.shape[-1]
    if layout == "viclip":
        return u_patch.reshape(-1, H, W, T, C).permute(0, 4, 3, 1, 2)
    if layout == "frames":
        return u_patch.reshape(-1, T, H, W, C).permute(0, 4, 1, 2, 3)
    raise ValueError(f"unknown token layout {layout!r}; expected one of {LAYOUTS}")


def grid_to_tokens(v: torch.Tensor, layout: str) -> torch.Tensor:
    """Inverse of :func:`patch_grid_view`: (B, C, T, H, W) -> patch tokens of ``layout``."""
    B, C, T, H, W = v.shape
    if layout == "viclip":
        return v.permute(0, 3, 4, 2, 1).reshape(B, H * W * T, C)
    return v.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)


def token_dwconv_ref(
    u_patch: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grid: tuple[int, int, int],
    layout: str = "viclip",
) -> torch.Tensor:
    """Depthwise 3-D convolution of the patch tokens over their (T, H, W) grid, same padding.

    weight: (C, 1, kT, kH, kW) with odd kernel sizes; bias: (C,). Returns the shape of ``u_patch``.
    """
    k = weight.shape[2:]
    v = patch_grid_view(u_patch, grid, layout)
    out = F.conv3d(v, weight, bias, padding=tuple(s // 2 for s in k), groups=v.shape[1])
    return grid_to_tokens(out, layout)


def check_adapter_call(layout: str, conv_w: torch.Tensor | None, grid: tuple[int, int, int] | None) -> None:
    """The argument checks every implementation of the adapter op shares (reference, Triton, extension)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown token layout {layout!r}; expected one of {LAYOUTS}")
    if conv_w is not None:
        if grid is None:
            raise ValueError("the temporal path needs the (T, H, W) grid of the patch tokens")
        if any(k % 2 == 0 for k in conv_w.shape[2:]):
            raise ValueError(f"the temporal convolution needs odd kernel sizes, got {tuple(conv_w.shape[2:])}")


def check_token_dwconv_call(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid,
                            layout: str) -> None:
    """The argument checks of the fast :func:`token_dwconv_ref` ops (the reference's contract, spelled out):
    tokens (rows, N, C) that fit the (T, H, W) grid in ``layout``, a depthwise weight (C, 1, kT, kH, kW)
    with odd sizes, a (C,) bias or None. Raises ValueError."""
    check_adapter_call(layout, weight, grid)
    if len(grid) != 3:
        raise ValueError(f"the grid must be (T, H, W), got {tuple(grid)}")
    T, H, W = (int(g) for g in grid)
    if u.dim() != 3 or weight.dim() != 5 or weight.shape[1] != 1 or weight.shape[0] != u.shape[-1]:
        raise ValueError(f"expected tokens (rows, N, C) and a depthwise weight (C, 1, kT, kH, kW), got "
                         f"{tuple(u.shape)} and {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (u.shape[-1],):
        raise ValueError(f"expected a bias of shape ({u.shape[-1]},), got {tuple(bias.shape)}")
    per_row = H * W * T if layout == "viclip" else H * W
    if u.shape[1] != per_row or (layout == "frames" and u.shape[0] % T):
        raise ValueError(f"tokens of shape {tuple(u.shape)} do not fit a {tuple(grid)} grid in the {layout!r} layout")


def adapter_hidden_ref(
    x: torch.Tensor,
    down_w: torch.Tensor,
    down_b: torch.Tensor | None,
    shared_w: torch.Tensor,
    shared_b: torch.Tensor | None,
    dropout_p: float = 0.0,
    training: bool = False,
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """h = dropout(ReLU(S(ReLU(Down(x))))): (..., C) -> (..., r).

    ``dropout_mask`` (boolean, shape of h) replaces the random draw, so that a fast path with its
    own random numbers can be compared with this reference.
    """
    h = F.relu(F.linear(F.relu(F.linear(x, down_w, down_b)), shared_w, shared_b))
    if training and dropout_p > 0:
        if dropout_mask is None:
            return F.dropout(h, dropout_p, training=True)
        return h * dropout_mask.to(h.dtype) / (1.0 - dropout_p)
    return h


def msta_adapter_ref(
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
    dropout_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One MSTA adapter application: ``residual + s * A(x)``.

    x: (B, L, C) normalised block input. The video tower passes ``conv_w`` and ``grid``
    (T, H, W); the text tower passes neither. Returns (B, L, C).
    """
    check_adapter_call(layout, conv_w, grid)
    x = scale_adapter_input(x, scale, grad_scale)
    h = adapter_hidden_ref(x, down_w, down_b, shared_w, shared_b, dropout_p, training, dropout_mask)
    u = F.linear(h, up_w, up_b)
    if conv_w is not None:
        start = 1 if has_cls else 0
        tconv = token_dwconv_ref(u[:, start:], conv_w, conv_b, grid, layout)
        u = torch.cat([u[:, :start], u[:, start:] + tconv], dim=1)
    out = scale_adapter_output(u, scale, grad_scale)
    return out if residual is None else residual + out


def reference_grads(fn, tensors: list, grad: torch.Tensor) -> list:
    """Gradients of ``(fn(*tensors) * grad).sum()`` for each tensor (zeros where unused, None for None).

    The backward of a fast path that cannot run (a Triton kernel that fails to compile) falls back
    to this: the reference recomputed from the saved inputs, differentiated by autograd.
    """
    leaves = [t.detach().requires_grad_(t.is_floating_point()) if t is not None else None for t in tensors]
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    with torch.enable_grad():
        out = fn(*leaves)
    found = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
    result = []
    for t in leaves:
        if t is None or not t.requires_grad:
            result.append(None)
            continue
        g = next(found)
        result.append(torch.zeros_like(t) if g is None else g)
    return result
