"""Depthwise 3-D convolution of patch tokens over their (T, H, W) grid, in token layout.

M2-CLIP's TED-Adapter uses it with (3, 1, 1) and (1, 3, 3) kernels (``msta_fast.ops.token_dwconv``);
the fused MSTA kernels (:mod:`msta_fast.kernels.up_tconv`) use it for kernels with spatial taps.

Math: the op of :func:`msta_fast.ops.reference.token_dwconv_ref` (imported here as
``token_dwconv_ref``), for patch tokens ``u`` flattened to (M, C) rows and a depthwise kernel
``w`` (C, 1, kT, kH, kW) with odd sizes, "same" zero padding:

    y[p, c]  = b[c] + sum_k w[c, k] * u[nb(p, k), c]                   forward
    du[q, c] = sum_k w[c, k] * gy[nb(q, -k), c]                        grad input (transposed conv)
    dw[c, k] = sum_p gy[p, c] * u[nb(p, k), c]                         grad weight
    db[c]    = sum_p gy[p, c]                                          grad bias

``nb(p, k)`` is the token of ``p``'s grid neighbour at offset k = (dt, dh, dw) - centre, or
nothing (a zero) outside the grid. It is found by index arithmetic on the rows, never by a
permuted copy (no class token here: every row is a patch token):

- ``"viclip"`` (LAYOUT 0): u is (B, H*W*T, C), row ``b*N + n*T + t`` with N = H*W*T and
  n = hh*W + ww; offsets dt, dh, dw move by 1, W*T and T rows.
- ``"frames"`` (LAYOUT 1): u is (B*T, H*W, C), row ``(clip*T + t)*N + hh*W + ww`` with N = H*W;
  offsets move by N, W and 1 rows.

The input may be a strided view (a slice ``a[:, 1:]`` that drops a class token, say): rows are
addressed through its batch and token strides, so it is not copied. Products are accumulated in
fp32; the weight and bias gradients are reduced over row tiles with fp32 atomics (so their last bits
are not deterministic on a GPU).

The forward and backward are ``torch.library`` custom ops (``msta_fast::token_dwconv_fwd`` / ``_bwd``);
a backward whose kernel fails asks :mod:`msta_fast.ops.fallback` whether it may run the reference
instead (under the ``auto`` backend).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from msta_fast.kernels.runtime import check_device, maybe_autotune, small_tiles_when, tile_configs
from msta_fast.kernels.token_grid import LAYOUT_CODES, neighbour_row, row_strides
from msta_fast.ops import fallback
from msta_fast.ops.reference import check_token_dwconv_call, reference_grads, token_dwconv_ref

__all__ = ["token_dwconv_ref", "token_dwconv_triton", "token_dwconv_fwd", "token_dwconv_bwd"]

# Search space, (BLOCK_M, BLOCK_N, num_warps, num_stages): the tiles that compile for sm_90 in bf16 without spilling
# registers, forward and backward, for (3,1,1), (1,3,3) and (3,3,3) kernels
# (benchmarks/results/kernel_resources_sm90.md; tests/test_kernels_resources.py); 128 x 64 tiles and 64 x 64 on 4
# warps spilled with 9 taps. The 27-tap kernels compile slowly (45 s per backward config with ptxas) and spill on 4
# warps: one tile on 8 warps.
_TILES = [(64, 64, 8, 2), (32, 64, 4, 2), (32, 64, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2), (32, 32, 4, 2),
          (32, 32, 8, 2), (128, 32, 8, 2)]
_PRUNE = {"early_config_prune": small_tiles_when(
    lambda a: a["KT"] * a["KH"] * a["KW"] > 9, {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 8}
)}
TUNING = {name: dict(configs=tile_configs(_TILES), prune_configs_by=_PRUNE)
          for name in ("_token_dwconv_fwd_kernel", "_token_dwconv_bwd_kernel")}
# Interpreter blocks: large (few Python-level programs), still not a divisor of the test shapes.
_INTERPRET_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64}


@triton.jit
def _coords(rows, N, T, W, LAYOUT: tl.constexpr):
    """Grid coordinates (t, hh, ww) of flattened patch-token rows."""
    p = rows % N
    if LAYOUT == 0:
        t = p % T
        n = p // T
    else:
        t = (rows // N) % T
        n = p
    return t, n // W, n % W


@maybe_autotune(key=["C", "KT", "KH", "KW"], **TUNING["_token_dwconv_fwd_kernel"])
@triton.jit
def _token_dwconv_fwd_kernel(
    u_ptr, w_ptr, b_ptr, y_ptr,
    M, C, N, T, H, W, ST, SH, SW, su_b, su_n,
    HAS_BIAS: tl.constexpr, LAYOUT: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < C
    rows = tl.where(row_ok, rows, 0)
    t, hh, ww = _coords(rows, N, T, W, LAYOUT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for kt in tl.static_range(KT):
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                tap = (kt * KH + kh) * KW + kw
                wtap = tl.load(w_ptr + cols * (KT * KH * KW) + tap, mask=col_ok, other=0.0).to(tl.float32)
                nrows, valid = neighbour_row(rows, t, hh, ww, row_ok, ST, SH, SW, T, H, W,
                                      kt - KT // 2, kh - KH // 2, kw - KW // 2)
                addr = (nrows // N) * su_b + (nrows % N) * su_n
                un = tl.load(u_ptr + addr[:, None] + cols[None, :], mask=valid[:, None] & col_ok[None, :],
                             other=0.0).to(tl.float32)
                acc += un * wtap[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * C + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@maybe_autotune(key=["C", "KT", "KH", "KW"], reset_to_zero=["dw_ptr", "db_ptr"], **TUNING["_token_dwconv_bwd_kernel"])
@triton.jit
def _token_dwconv_bwd_kernel(
    g_ptr, u_ptr, w_ptr, du_ptr, dw_ptr, db_ptr,
    M, C, N, T, H, W, ST, SH, SW, su_b, su_n,
    NEED_DU: tl.constexpr, NEED_DW: tl.constexpr, HAS_BIAS: tl.constexpr, LAYOUT: tl.constexpr,
    KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """du = conv^T(gy); dw[tap, c] += sum_rows gy * u[nb(., tap)]; db[c] += sum_rows gy (fp32 buffers)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < C
    rows = tl.where(row_ok, rows, 0)
    mask = row_ok[:, None] & col_ok[None, :]
    t, hh, ww = _coords(rows, N, T, W, LAYOUT)
    g = tl.load(g_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    du = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for kt in tl.static_range(KT):
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                tap = (kt * KH + kh) * KW + kw
                ot = kt - KT // 2
                oh = kh - KH // 2
                ow = kw - KW // 2
                if NEED_DU:
                    # Transposed convolution: token q receives w[k] * gy[p] from p = nb(q, -k).
                    wtap = tl.load(w_ptr + cols * (KT * KH * KW) + tap, mask=col_ok, other=0.0).to(tl.float32)
                    srows, svalid = neighbour_row(rows, t, hh, ww, row_ok, ST, SH, SW, T, H, W, -ot, -oh, -ow)
                    gs = tl.load(g_ptr + srows[:, None] * C + cols[None, :], mask=svalid[:, None] & col_ok[None, :],
                                 other=0.0).to(tl.float32)
                    du += gs * wtap[None, :]
                if NEED_DW:
                    nrows, nvalid = neighbour_row(rows, t, hh, ww, row_ok, ST, SH, SW, T, H, W, ot, oh, ow)
                    addr = (nrows // N) * su_b + (nrows % N) * su_n
                    un = tl.load(u_ptr + addr[:, None] + cols[None, :], mask=nvalid[:, None] & col_ok[None, :],
                                 other=0.0).to(tl.float32)
                    tl.atomic_add(dw_ptr + tap * C + cols, tl.sum(g * un, axis=0), mask=col_ok)
    if HAS_BIAS:
        tl.atomic_add(db_ptr + cols, tl.sum(g, axis=0), mask=col_ok)
    if NEED_DU:
        tl.store(du_ptr + rows[:, None] * C + cols[None, :], du.to(du_ptr.dtype.element_ty), mask=mask)


def _launch_meta(kernel) -> dict:
    """Explicit blocks in the interpreter, autotuned ones on a GPU; the grid reads whichever applies."""
    return {} if isinstance(kernel, triton.runtime.Autotuner) else dict(_INTERPRET_BLOCKS)


def _as_rows(u: torch.Tensor) -> torch.Tensor:
    """u with a unit channel stride (a token slice keeps its batch and token strides)."""
    return u if u.stride(-1) == 1 else u.contiguous()


def token_dwconv_fwd(u, weight, bias, grid, layout) -> torch.Tensor:
    """y = TConv(u) (+ bias): u (rows, N, C), possibly strided over rows and tokens -> contiguous y."""
    u = _as_rows(u)
    weight = weight.contiguous()
    B0, N, C = u.shape
    T, H, W = grid
    kt, kh, kw = weight.shape[2:]
    y = torch.empty(B0, N, C, device=u.device, dtype=u.dtype)
    M = B0 * N
    if M == 0 or C == 0:
        return y.zero_() + (bias if bias is not None else 0)
    meta = _launch_meta(_token_dwconv_fwd_kernel)
    launch_grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(C, m["BLOCK_N"]))  # noqa: E731
    _token_dwconv_fwd_kernel[launch_grid](
        u, weight, bias if bias is not None else weight, y,
        M, C, N, T, H, W, *row_strides(N, grid, layout), u.stride(0), u.stride(1),
        HAS_BIAS=bias is not None, LAYOUT=LAYOUT_CODES[layout], KT=kt, KH=kh, KW=kw, **meta,
    )
    return y


def token_dwconv_bwd(grad, u, weight, has_bias: bool, grid, layout, need_du=True, need_dw=True):
    """(du (shape of u) or None, d weight (shape of weight) or None, d bias (C,) fp32 or None)."""
    u = _as_rows(u)
    grad = grad.contiguous()
    weight = weight.contiguous()
    B0, N, C = u.shape
    T, H, W = grid
    kt, kh, kw = weight.shape[2:]
    du = torch.empty(B0, N, C, device=u.device, dtype=u.dtype) if need_du else None
    dw = torch.zeros(kt * kh * kw, C, device=u.device, dtype=torch.float32)
    db = torch.zeros(C, device=u.device, dtype=torch.float32)
    M = B0 * N
    if M and C and (need_du or need_dw or has_bias):
        meta = _launch_meta(_token_dwconv_bwd_kernel)
        launch_grid = lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(C, m["BLOCK_N"]))  # noqa: E731
        _token_dwconv_bwd_kernel[launch_grid](
            grad, u, weight, du if need_du else grad, dw, db,
            M, C, N, T, H, W, *row_strides(N, grid, layout), u.stride(0), u.stride(1),
            NEED_DU=need_du, NEED_DW=need_dw, HAS_BIAS=has_bias, LAYOUT=LAYOUT_CODES[layout],
            KT=kt, KH=kh, KW=kw, **meta,
        )
    elif need_du:
        du.zero_()
    d_weight = dw.t().reshape(weight.shape) if need_dw else None
    return du, d_weight, db if has_bias else None


_LAYOUTS = {code: name for name, code in LAYOUT_CODES.items()}


@torch.library.custom_op("msta_fast::token_dwconv_fwd", mutates_args=())
def _dwconv_fwd(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid: list[int],
                layout: int) -> torch.Tensor:
    """y = TConv(u) + b, contiguous."""
    return token_dwconv_fwd(u, weight, bias, tuple(grid), _LAYOUTS[layout])


@_dwconv_fwd.register_fake
def _(u, weight, bias, grid, layout):
    return u.new_empty(u.shape)


@torch.library.custom_op("msta_fast::token_dwconv_bwd", mutates_args=())
def _dwconv_bwd(grad: torch.Tensor, u: torch.Tensor, weight: torch.Tensor, need_du: bool, need_dw: bool,
                need_db: bool, grid: list[int], layout: int) -> list[torch.Tensor]:
    """[du (u's shape and dtype), d weight (weight's dtype), d bias (fp32)]; empty where not needed."""
    du, dw, db = token_dwconv_bwd(grad, u, weight, need_db, tuple(grid), _LAYOUTS[layout], need_du=need_du,
                                  need_dw=need_dw)
    return [
        du if need_du else grad.new_empty(0),
        dw.to(weight.dtype) if need_dw else grad.new_empty(0),
        db if need_db else grad.new_empty(0),
    ]


@_dwconv_bwd.register_fake
def _(grad, u, weight, need_du, need_dw, need_db, grid, layout):
    return [
        u.new_empty(u.shape) if need_du else grad.new_empty(0),
        torch.empty_like(weight) if need_dw else grad.new_empty(0),
        grad.new_empty(u.shape[-1], dtype=torch.float32) if need_db else grad.new_empty(0),
    ]


def _setup_context(ctx, inputs, output):
    u, weight, bias, grid, layout = inputs
    ctx.save_for_backward(u, weight)
    ctx.options = (grid, layout)
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, grad):
    u, weight = ctx.saved_tensors
    grid, layout = ctx.options
    need_du, need_dw, need_db = ctx.needs_input_grad[:3]
    try:
        du, dw, db = _dwconv_bwd(grad.contiguous(), u, weight, need_du, need_dw, need_db, grid, layout)
    except Exception as err:  # noqa: BLE001 - fallback.fall_back decides; anything else is re-raised
        # auto, eager mode: the reference's gradients, and later calls skip Triton
        if not fallback.fall_back(err, "backward"):
            raise
        bias = u.new_zeros(u.shape[-1]) if need_db else None
        du, dw, db = reference_grads(lambda *t: token_dwconv_ref(*t, tuple(grid), _LAYOUTS[layout]),
                                     [u, weight, bias], grad)
    return (du if need_du else None, dw if need_dw else None, db.to(ctx.bias_dtype) if need_db else None,
            None, None)


_dwconv_fwd.register_autograd(_backward, setup_context=_setup_context)


def token_dwconv_triton(
    u_patch: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grid: tuple[int, int, int],
    layout: str = "viclip",
) -> torch.Tensor:
    """Signature and semantics of :func:`token_dwconv_ref`, on the Triton kernels (differentiable).

    u_patch: (B, H*W*T, C) for ``"viclip"``, (B*T, H*W, C) for ``"frames"``; weight (C, 1, kT, kH, kW)
    with odd sizes; bias (C,) or None. The output is contiguous, of u_patch's shape and dtype.
    The forward and backward are ``torch.library`` ops, so ``torch.compile`` traces through them. A backward
    whose kernel fails runs the reference under the ``auto`` backend and raises under any other
    (:mod:`msta_fast.ops.fallback`).
    """
    grid = [int(g) for g in grid]
    check_token_dwconv_call(u_patch, weight, bias, grid, layout)
    check_device(u_patch)
    return _dwconv_fwd(u_patch, weight, bias, grid, LAYOUT_CODES[layout])
