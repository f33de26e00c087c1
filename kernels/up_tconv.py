"""MSTA's up-projection with its temporal path (u + TConv(u), TConv the depthwise 3-D convolution of the
tokens over their (T, H, W) grid) fused in the epilogue, in token layout.

Math (per row tile of tokens and column tile of the width C), for the hidden activation ``h``
(M, r) of the adapter chain, ``M = B * L`` flattened tokens:

    u    = h @ Wu^T + bu                                             (M, C)
    A[p] = u[p] + sum_k w[:, k] * u[nb(p, k)] + b_conv              patch token p
    A[p] = u[p]                                                       class token p
    out  = residual + s * A

``nb(p, k)`` is the token of ``p``'s grid neighbour at offset k = (dt, dh, dw) of the (kT, kH, kW)
kernel ("same" zero padding: a neighbour outside the grid contributes nothing). The neighbour is
found by index arithmetic, never by a permuted copy:

- ``"viclip"`` (LAYOUT 0): row ``b*L + cls + n*T + t``, n = hh*W + ww; offsets dt, dh, dw move by
  1, W*T and T rows.
- ``"frames"`` (LAYOUT 1): row ``(clip*T + t)*L + cls + hh*W + ww``; offsets move by L, W and 1 rows.

Neighbours' ``u``, for a temporal kernel (kT, 1, 1) (the (M, C) tensor ``u`` is never written to memory):

- **halo tiles** (``HALO`` > 0: the ViCLIP layout with a temporal-only kernel (kT, 1, 1), MSTA's
  default): a token's temporal neighbours are the rows next to it, so each program computes ``u``
  once for BLOCK_M consecutive rows and keeps only the middle BLOCK_M - 2*HALO of them (HALO = kT // 2
  rows of overlap on each side, recomputed by the next tile: 2/64 of the rows at (3,1,1)); the taps
  read the shifted rows from the register tile (``tl.gather``). One up-projection GEMM per row, as
  without the convolution.
- **clip tiles** (``FRAME_T`` = T > 0: the frame-row layout with a temporal-only kernel, T a power
  of two up to 16): a tile holds J = BLOCK_M / T tokens of one clip in all T of its frames
  (t-major), so every temporal neighbour of a tile row is in the tile, J rows away. One GEMM per row.

Both run one up-projection GEMM per row. Kernels with spatial taps (and tilings that do not fit) run
unfused: the plain up-projection kernel writes ``u`` and :mod:`msta_fast.kernels.token_dwconv` adds the
convolution, reading each neighbour from memory (recomputing ``u`` per tap would cost 27 GEMMs at
(3,3,3)).

The backward kernel gives ``du = gA + conv^T(gA)`` and the convolution's weight and bias gradients
(atomically reduced over row tiles) from the same tiles.

Reference: the steps of :func:`msta_fast.ops.reference.msta_adapter_ref` after the hidden chain; the
autograd formula that calls these launchers is in :mod:`msta_fast.kernels.msta_chain`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from msta_fast.kernels.runtime import dot_precision, maybe_autotune, next_pow2, small_tiles_when, tile_configs
from msta_fast.kernels.token_dwconv import token_dwconv_bwd, token_dwconv_fwd
from msta_fast.kernels.token_grid import LAYOUT_CODES, neighbour_row, row_strides

# Search spaces, (BLOCK_M, BLOCK_N, num_warps, num_stages): the tiles that compile for sm_90 in bf16 without spilling
# registers and can launch, at adapter dims 128 and 256, in every tiling (benchmarks/results/kernel_resources_sm90.md;
# tests/test_kernels_resources.py). The BLOCK_N x BLOCK_R tile of Wu stays on chip. First: MSTA_FAST_AUTOTUNE=first's.
_FWD_TILES = [(64, 64, 4, 2), (32, 64, 4, 2), (32, 64, 8, 3), (64, 64, 8, 3), (32, 128, 4, 2), (32, 128, 8, 3),
              (64, 128, 8, 3)]
# The backward also holds the output gradient's tile and the shifted copies of both: wider tiles spilled.
_BWD_TILES = [(32, 64, 8, 3), (32, 64, 4, 2), (64, 64, 8, 3)]
# fp32 (parity runs: ptxas needs minutes per large fp32 config) only tries the small tiles.
_SMALL_FP32 = {"early_config_prune": small_tiles_when(
    lambda a: a["h_ptr"].element_size() == 4, {"BLOCK_M": 32, "BLOCK_N": 64}
)}
TUNING = {"_up_tconv_fwd_kernel": dict(configs=tile_configs(_FWD_TILES), prune_configs_by=_SMALL_FP32),
          "_up_tconv_bwd_kernel": dict(configs=tile_configs(_BWD_TILES), prune_configs_by=_SMALL_FP32)}
# Interpreter blocks: large (fewer Python-level programs), still not a divisor of the test shapes.
_INTERPRET_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 64}


@triton.jit
def _token_coords(rows, L, T, W, HAS_CLS: tl.constexpr, LAYOUT: tl.constexpr):
    """Grid coordinates (t, hh, ww) of token rows and whether each row is a patch token."""
    j = rows % L
    is_patch = j >= HAS_CLS
    p = tl.where(is_patch, j - HAS_CLS, 0)
    if LAYOUT == 0:
        t = p % T
        n = p // T
    else:
        t = (rows // L) % T
        n = p
    return t, n // W, n % W, is_patch


@triton.jit
def _up_weight_tile(wu_ptr, bu_ptr, pid_n, C, R, HAS_BU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """The program's columns of C, which exist, the r index, the Wu^T tile (BLOCK_R, BLOCK_N) (up_w is (C, R)
    row-major) and the up-projection's bias (BLOCK_N,) in fp32 (zeros without one)."""
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < C
    rr = tl.arange(0, BLOCK_R)
    wut = tl.load(wu_ptr + cols[None, :] * R + rr[:, None], mask=(rr < R)[:, None] & col_ok[None, :], other=0.0)
    bu = tl.zeros((BLOCK_N,), tl.float32)
    if HAS_BU:
        bu = tl.load(bu_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return cols, col_ok, rr, wut, bu


@triton.jit
def _up_rows(h_ptr, nrows, valid, rr, R, wut, bu, PRECISION: tl.constexpr, HAS_BU: tl.constexpr):
    """u[nrows] = h[nrows] @ Wu^T (+ bu) for the valid rows, 0 elsewhere: (BLOCK_M, BLOCK_N) fp32."""
    hn = tl.load(h_ptr + nrows[:, None] * R + rr[None, :], mask=valid[:, None] & (rr < R)[None, :], other=0.0)
    un = tl.dot(hn, wut, input_precision=PRECISION)
    if HAS_BU:
        un += tl.where(valid[:, None], bu[None, :], 0.0)
    return un


@triton.jit
def _tile_rows(pid_m, M, L, HALO: tl.constexpr, FRAME_T: tl.constexpr, BLOCK_M: tl.constexpr):
    """The tile's rows (clamped into range), which exist, and which this program writes (module docstring):
    consecutive rows; with a halo, tiles that overlap by 2 * HALO rows and keep their middle; clip tiles of
    BLOCK_M // FRAME_T tokens x FRAME_T frames."""
    local = tl.arange(0, BLOCK_M)
    if FRAME_T > 0:
        J: tl.constexpr = BLOCK_M // FRAME_T
        blocks = tl.cdiv(L, J)
        token = (pid_m % blocks) * J + local % J
        rows = ((pid_m // blocks) * FRAME_T + local // J) * L + token
        row_ok = (token < L) & (rows < M)
        owned = row_ok
    else:
        rows = pid_m * (BLOCK_M - 2 * HALO) - HALO + local
        row_ok = (rows >= 0) & (rows < M)
        owned = row_ok & (local >= HALO) & (local < BLOCK_M - HALO)
    return tl.where(row_ok, rows, 0), row_ok, owned


@triton.jit
def _shifted_rows(x, valid, offset, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """x[i + offset] for the rows i where ``valid`` (0 elsewhere), read from the register tile itself."""
    local = tl.minimum(tl.maximum(tl.arange(0, BLOCK_M) + offset, 0), BLOCK_M - 1)
    shifted = tl.gather(x, tl.broadcast_to(local[:, None], (BLOCK_M, BLOCK_N)), axis=0)
    return tl.where(valid[:, None], shifted, 0.0)


@maybe_autotune(key=["C", "R", "KT", "KH", "KW"], **TUNING["_up_tconv_fwd_kernel"])
@triton.jit
def _up_tconv_fwd_kernel(
    h_ptr, wu_ptr, bu_ptr, cw_ptr, cb_ptr, res_ptr, out_ptr,
    M, C, R, L, T, H, W, ST, SH, SW, scale,
    HAS_BU: tl.constexpr, HAS_CONV: tl.constexpr, HAS_CB: tl.constexpr, HAS_RES: tl.constexpr,
    HAS_CLS: tl.constexpr, LAYOUT: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HALO: tl.constexpr, FRAME_T: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows, row_ok, owned = _tile_rows(pid_m, M, L, HALO, FRAME_T, BLOCK_M)
    # tile rows between a token and its next frame; 0: its neighbours are not in the tile
    STEP: tl.constexpr = BLOCK_M // FRAME_T if FRAME_T > 0 else (1 if HALO > 0 else 0)
    cols, col_ok, rr, wut, bu = _up_weight_tile(wu_ptr, bu_ptr, pid_n, C, R, HAS_BU, BLOCK_N, BLOCK_R)
    # u of the tile's own rows: A = u (+ the temporal path below).
    u = _up_rows(h_ptr, rows, row_ok, rr, R, wut, bu, PRECISION, HAS_BU)
    acc = u
    if HAS_CONV:
        t, hh, ww, is_patch = _token_coords(rows, L, T, W, HAS_CLS, LAYOUT)
        is_patch = is_patch & row_ok
        conv = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for kt in tl.static_range(KT):
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    tap = (kt * KH + kh) * KW + kw
                    wtap = tl.load(cw_ptr + cols * (KT * KH * KW) + tap, mask=col_ok, other=0.0).to(tl.float32)
                    if (kt == KT // 2) and (kh == KH // 2) and (kw == KW // 2):
                        un = u
                    else:
                        _, valid = neighbour_row(rows, t, hh, ww, is_patch, ST, SH, SW, T, H, W,
                                                 kt - KT // 2, kh - KH // 2, kw - KW // 2)
                        un = _shifted_rows(u, valid, (kt - KT // 2) * STEP, BLOCK_M, BLOCK_N)
                    conv += un * wtap[None, :]
        if HAS_CB:
            conv += tl.load(cb_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc += tl.where(is_patch[:, None], conv, 0.0)
    # out = residual + s * A, accumulated in fp32 and written once.
    acc = acc * scale
    offs = rows[:, None] * C + cols[None, :]
    mask = owned[:, None] & col_ok[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@maybe_autotune(key=["C", "R", "KT", "KH", "KW"], reset_to_zero=["dcw_ptr", "dcb_ptr"],
                **TUNING["_up_tconv_bwd_kernel"])
@triton.jit
def _up_tconv_bwd_kernel(
    g_ptr, h_ptr, wu_ptr, bu_ptr, cw_ptr, du_ptr, dcw_ptr, dcb_ptr,
    M, C, R, L, T, H, W, ST, SH, SW, gscale,
    HAS_BU: tl.constexpr, HAS_CB: tl.constexpr,
    HAS_CLS: tl.constexpr, LAYOUT: tl.constexpr, KT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    HALO: tl.constexpr, FRAME_T: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """du = gA + conv^T(gA) (patch rows), dconv_w[c, k] += sum_p gA[p, c] u[nb(p, k), c], dconv_b += sum_p gA."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows, row_ok, owned = _tile_rows(pid_m, M, L, HALO, FRAME_T, BLOCK_M)
    # tile rows between a token and its next frame; 0: its neighbours are not in the tile
    STEP: tl.constexpr = BLOCK_M // FRAME_T if FRAME_T > 0 else (1 if HALO > 0 else 0)
    cols, col_ok, rr, wut, bu = _up_weight_tile(wu_ptr, bu_ptr, pid_n, C, R, HAS_BU, BLOCK_N, BLOCK_R)
    mask = row_ok[:, None] & col_ok[None, :]
    # gA = dL/dA (the output gradient times s unless gradient scaling hides s from the parameters).
    ga = tl.load(g_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32) * gscale
    t, hh, ww, is_patch = _token_coords(rows, L, T, W, HAS_CLS, LAYOUT)
    is_patch = is_patch & row_ok
    # The reductions count each row once: its owner's.
    ga_patch = tl.where((is_patch & owned)[:, None], ga, 0.0)
    du = ga
    u = _up_rows(h_ptr, rows, row_ok, rr, R, wut, bu, PRECISION, HAS_BU)
    for kt in tl.static_range(KT):
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                tap = (kt * KH + kh) * KW + kw
                ot = kt - KT // 2
                oh = kh - KH // 2
                ow = kw - KW // 2
                wtap = tl.load(cw_ptr + cols * (KT * KH * KW) + tap, mask=col_ok, other=0.0).to(tl.float32)
                # Transposed convolution: token q receives w[k] * gA[p] from p = nb(q, -k).
                _, svalid = neighbour_row(rows, t, hh, ww, is_patch, ST, SH, SW, T, H, W, -ot, -oh, -ow)
                _, nvalid = neighbour_row(rows, t, hh, ww, is_patch, ST, SH, SW, T, H, W, ot, oh, ow)
                gs = _shifted_rows(ga, svalid, -ot * STEP, BLOCK_M, BLOCK_N)
                # Weight gradient: u at the forward neighbour nb(p, k), from the tile's own u.
                un = _shifted_rows(u, nvalid, ot * STEP, BLOCK_M, BLOCK_N)
                du += gs * wtap[None, :]
                tl.atomic_add(dcw_ptr + tap * C + cols, tl.sum(ga_patch * un, axis=0), mask=col_ok)
    if HAS_CB:
        tl.atomic_add(dcb_ptr + cols, tl.sum(ga_patch, axis=0), mask=col_ok)
    tl.store(du_ptr + rows[:, None] * C + cols[None, :], du.to(du_ptr.dtype.element_ty),
             mask=owned[:, None] & col_ok[None, :])


def row_tiling(layout: str, kernel: tuple[int, int, int], frames: int) -> dict | None:
    """``HALO`` and ``FRAME_T`` of the fused kernels for a convolution kernel and T frames (module docstring);
    None where neither tiling holds the temporal neighbours (the convolution then runs unfused)."""
    kt, kh, kw = kernel
    if kh != 1 or kw != 1:
        return None
    if layout == "viclip" and kt <= 9:  # the smallest tile (32 rows) still keeps half of its rows
        return {"HALO": kt // 2, "FRAME_T": 0}
    if layout == "frames" and frames & (frames - 1) == 0 and frames <= 16:  # >= 2 tokens per frame in 32 rows
        return {"HALO": 0, "FRAME_T": frames}
    return None


def _tile_grid(M: int, C: int, tokens: int, tiling: dict):
    """Launch grid over (row tiles, column tiles) for the block sizes the autotuner picks."""
    if tiling["FRAME_T"]:
        clips = M // (tokens * tiling["FRAME_T"])
        return lambda m: (clips * triton.cdiv(tokens, m["BLOCK_M"] // tiling["FRAME_T"]), triton.cdiv(C, m["BLOCK_N"]))
    return lambda m: (triton.cdiv(M, m["BLOCK_M"] - 2 * tiling["HALO"]), triton.cdiv(C, m["BLOCK_N"]))


def _launch_meta(kernel) -> dict:
    """Explicit blocks in the interpreter, autotuned ones on a GPU; the grid reads whichever applies."""
    return {} if isinstance(kernel, triton.runtime.Autotuner) else dict(_INTERPRET_BLOCKS)


def _patch_tokens(rows: torch.Tensor, tokens: int, has_cls: bool) -> torch.Tensor:
    """(M, C) token rows -> a view of the patch tokens (rows, N, C), the layout :mod:`token_dwconv` takes."""
    blocks = rows.view(-1, tokens, rows.shape[1])  # (B, L, C) for "viclip", (B*T, L, C) for "frames"
    return blocks[:, 1:] if has_cls else blocks


def up_tconv_fwd(
    h: torch.Tensor,
    up_w: torch.Tensor,
    up_b: torch.Tensor | None,
    conv_w: torch.Tensor | None,
    conv_b: torch.Tensor | None,
    residual: torch.Tensor | None,
    scale: float,
    tokens: int,
    grid: tuple[int, int, int],
    layout: str,
    has_cls: bool,
) -> torch.Tensor:
    """out = residual + s * (u + TConv(u)), u = h @ Wu^T + bu. h: (M, r); residual: (M, C) or None -> (M, C)."""
    M, R = h.shape
    C = up_w.shape[0]
    T, H, W = grid
    kt, kh, kw = conv_w.shape[2:] if conv_w is not None else (1, 1, 1)
    tiling = row_tiling(layout, (kt, kh, kw), T) if conv_w is not None else {"HALO": 0, "FRAME_T": 0}
    if tiling is None:
        # Spatial taps: u is written once and convolved by the token kernel (reading neighbours from memory
        # beats recomputing their up-projection per tap: 27 GEMMs at (3,3,3)).
        u = up_tconv_fwd(h, up_w, up_b, None, None, None, 1.0, tokens, grid, layout, has_cls)
        patches = _patch_tokens(u, tokens, has_cls)
        patches += token_dwconv_fwd(patches, conv_w, conv_b, grid, layout)
        return torch.add(residual, u, alpha=scale) if residual is not None else u.mul_(scale)
    out = torch.empty(M, C, device=h.device, dtype=h.dtype if residual is None else residual.dtype)
    dummy = h
    meta = _launch_meta(_up_tconv_fwd_kernel)
    _up_tconv_fwd_kernel[_tile_grid(M, C, tokens, tiling)](
        h, up_w, up_b if up_b is not None else dummy, conv_w if conv_w is not None else dummy,
        conv_b if conv_b is not None else dummy, residual if residual is not None else dummy, out,
        M, C, R, tokens, T, H, W, *row_strides(tokens, grid, layout), float(scale),
        HAS_BU=up_b is not None, HAS_CONV=conv_w is not None, HAS_CB=conv_b is not None,
        HAS_RES=residual is not None, HAS_CLS=int(has_cls), LAYOUT=LAYOUT_CODES[layout], KT=kt, KH=kh, KW=kw,
        **tiling, PRECISION=dot_precision(h.dtype), BLOCK_R=next_pow2(R), **meta,
    )
    return out


def up_tconv_bwd(
    grad: torch.Tensor,
    h: torch.Tensor,
    up_w: torch.Tensor,
    up_b: torch.Tensor | None,
    conv_w: torch.Tensor,
    conv_b: torch.Tensor | None,
    gscale: float,
    tokens: int,
    grid: tuple[int, int, int],
    layout: str,
    has_cls: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients through the temporal path: (du (M, C), d conv_w (shape of conv_w), d conv_b (C,) or None)."""
    M, R = h.shape
    C = up_w.shape[0]
    T, H, W = grid
    kt, kh, kw = conv_w.shape[2:]
    tiling = row_tiling(layout, (kt, kh, kw), T)
    if tiling is None:
        # Unfused, as the forward: gA, u recomputed by the plain up-projection kernel, the token kernel's backward.
        du = (grad * gscale).to(h.dtype)
        u = up_tconv_fwd(h, up_w, up_b, None, None, None, 1.0, tokens, grid, layout, has_cls)
        du_patches = _patch_tokens(du, tokens, has_cls)
        du_conv, d_conv_w, d_conv_b = token_dwconv_bwd(du_patches, _patch_tokens(u, tokens, has_cls), conv_w,
                                                       conv_b is not None, grid, layout)
        du_patches.add_(du_conv)
        return du, d_conv_w.to(conv_w.dtype), d_conv_b.to(conv_b.dtype) if conv_b is not None else None
    du = torch.empty(M, C, device=h.device, dtype=h.dtype)
    dcw = torch.zeros(kt * kh * kw, C, device=h.device, dtype=torch.float32)
    dcb = torch.zeros(C, device=h.device, dtype=torch.float32)
    meta = _launch_meta(_up_tconv_bwd_kernel)
    _up_tconv_bwd_kernel[_tile_grid(M, C, tokens, tiling)](
        grad, h, up_w, up_b if up_b is not None else h, conv_w, du, dcw, dcb,
        M, C, R, tokens, T, H, W, *row_strides(tokens, grid, layout), float(gscale),
        HAS_BU=up_b is not None, HAS_CB=conv_b is not None, HAS_CLS=int(has_cls), LAYOUT=LAYOUT_CODES[layout],
        KT=kt, KH=kh, KW=kw, **tiling, PRECISION=dot_precision(h.dtype), BLOCK_R=next_pow2(R), **meta,
    )
    d_conv_w = dcw.t().reshape(conv_w.shape).to(conv_w.dtype)
    d_conv_b = dcb.to(conv_b.dtype) if conv_b is not None else None
    return du, d_conv_w, d_conv_b
