"""The adapter's hidden chain on a token matrix: h = dropout(ReLU(ReLU(x Wd^T + bd) Ws^T + bs)).

Forward (one program per tile of BLOCK_M tokens; the (BLOCK_M, r) intermediates never leave chip):

    a1 = x @ Wd^T + bd       K loop over C in BLOCK_K steps, fp32 accumulator (BLOCK_M, BLOCK_R)
    z1 = ReLU(a1)
    a2 = z1 @ Ws^T + bs      in column chunks of BLOCK_N of the r outputs
    h  = keep * ReLU(a2) / (1 - p),  keep = rand(seed, row * r + col) >= p

Backward (same tiling; recomputes a1, z1, a2 from x instead of storing them):

    dh  = du @ Wu            K loop over C (du: gradient of the up-projection's output)
    da2 = dh * keep / (1 - p) * [a2 > 0]
    dz1 = da2 @ Ws ;  da1 = dz1 * [z1 > 0]   (z1 > 0 iff a1 > 0: the fp32 a1 tile need not stay live)
    dx  = xscale * da1 @ Wd  written in column chunks of C

and stores z1, da2, da1 (M, r each) for the weight gradients, which are plain GEMMs reduced over
all tokens (``da2^T z1``, ``da1^T x``) and left to cuBLAS. Design limit: r <= 256 (one register
tile of BLOCK_R = next_pow2(r) columns).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from msta_fast.kernels.runtime import (
    dot_precision,
    maybe_autotune,
    next_pow2,
    small_tiles_when,
    tile_configs,
    tiles_for_dim,
)

MAX_DIM = 256

# Search spaces, as (BLOCK_M, BLOCK_N, num_warps, num_stages) per adapter-dim tile BLOCK_R (a dim up to the key):
# the tiles that compile for sm_90 in bf16 without spilling registers and can launch (benchmarks/kernel_resources.py
# writes the table, benchmarks/results/kernel_resources_sm90.md; tests/test_kernels_resources.py holds these lists
# to it). The first tile is the one MSTA_FAST_AUTOTUNE=first launches. BLOCK_N up to BLOCK_R lets the backward read
# du once (one chunk of the r outputs) instead of r / BLOCK_N times; larger chunks cost registers.
_FWD_TILES = {256: [(64, 64, 4, 2), (32, 64, 4, 2), (32, 128, 4, 2), (64, 128, 4, 2), (32, 256, 4, 2), (64, 32, 4, 2),
                    (32, 64, 8, 3), (64, 64, 8, 3), (32, 32, 4, 2)]}
# The backward keeps two (BLOCK_M, r) tiles live (z1 and the dz1 accumulator): at r = 256 only 16-row tiles on 8
# warps compile without spilling (every 32- and 64-row tile spilled 0.2-2.7 KB per thread).
_BWD_TILES = {128: [(32, 64, 8, 3), (32, 32, 4, 2), (32, 32, 8, 3), (32, 128, 8, 3), (64, 32, 8, 3), (64, 64, 8, 3)],
              256: [(16, 64, 8, 3), (16, 32, 8, 3)]}
# fp32 (parity runs: exact fp32 dots compile slowly) only tries the small tiles.
_SMALL_FP32 = small_tiles_when(lambda a: a["x_ptr"].element_size() == 4, {"BLOCK_M": 32, "BLOCK_N": 32})
TUNING = {
    name: dict(configs=tile_configs([t for ts in tiles.values() for t in ts], BLOCK_K=64),
               prune_configs_by={"early_config_prune": tiles_for_dim(tiles, then=_SMALL_FP32)})
    for name, tiles in (("_hidden_fwd_kernel", _FWD_TILES), ("_hidden_bwd_kernel", _BWD_TILES))
}
_INTERPRET_BLOCKS = {"BLOCK_M": 32, "BLOCK_K": 64, "BLOCK_N": 64}


@triton.jit
def _down(x_ptr, wd_ptr, bd_ptr, rows, row_ok, rr, C, R,
          HAS_BD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
          BLOCK_R: tl.constexpr):
    """a1 = x[rows] @ Wd^T + bd: (BLOCK_M, BLOCK_R) fp32."""
    acc = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    for k0 in range(0, C, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + rows[:, None] * C + rk[None, :], mask=row_ok[:, None] & (rk < C)[None, :], other=0.0)
        wdt = tl.load(wd_ptr + rr[None, :] * C + rk[:, None], mask=(rk < C)[:, None] & (rr < R)[None, :], other=0.0)
        acc = tl.dot(xt, wdt, acc, input_precision=PRECISION)
    if HAS_BD:
        acc += tl.load(bd_ptr + rr, mask=rr < R, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _shared_chunk(z1, ws_ptr, bs_ptr, rr, rn, R, HAS_BS: tl.constexpr, PRECISION: tl.constexpr):
    """a2[:, rn] = z1 @ Ws[rn, :]^T + bs[rn]: (BLOCK_M, BLOCK_N) fp32."""
    wst = tl.load(ws_ptr + rn[None, :] * R + rr[:, None], mask=(rr < R)[:, None] & (rn < R)[None, :], other=0.0)
    a2 = tl.dot(z1, wst, input_precision=PRECISION)
    if HAS_BS:
        a2 += tl.load(bs_ptr + rn, mask=rn < R, other=0.0).to(tl.float32)[None, :]
    return a2


@triton.jit
def _keep(seed, rows, rn, R, p_drop):
    """Dropout keep mask drawn from (seed, element index): the same in forward, backward and mask export."""
    return tl.rand(seed, rows[:, None] * R + rn[None, :]) >= p_drop


@maybe_autotune(key=["C", "R", "DROPOUT"], **TUNING["_hidden_fwd_kernel"])
@triton.jit
def _hidden_fwd_kernel(
    x_ptr, wd_ptr, bd_ptr, ws_ptr, bs_ptr, h_ptr,
    M, C, R, seed, p_drop, keep_scale,
    HAS_BD: tl.constexpr, HAS_BS: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows = tl.where(row_ok, rows, 0)
    rr = tl.arange(0, BLOCK_R)
    a1 = _down(x_ptr, wd_ptr, bd_ptr, rows, row_ok, rr, C, R, HAS_BD, PRECISION, BLOCK_M, BLOCK_K, BLOCK_R)
    z1 = tl.maximum(a1, 0.0).to(x_ptr.dtype.element_ty)
    for n0 in range(0, R, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        h = tl.maximum(_shared_chunk(z1, ws_ptr, bs_ptr, rr, rn, R, HAS_BS, PRECISION), 0.0)
        if DROPOUT:
            h = tl.where(_keep(seed, rows, rn, R, p_drop), h * keep_scale, 0.0)
        tl.store(h_ptr + rows[:, None] * R + rn[None, :], h.to(h_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (rn < R)[None, :])


@maybe_autotune(key=["C", "R", "DROPOUT"], **TUNING["_hidden_bwd_kernel"])
@triton.jit
def _hidden_bwd_kernel(
    x_ptr, wd_ptr, bd_ptr, ws_ptr, bs_ptr, wu_ptr, du_ptr, dx_ptr, z1_ptr, da1_ptr, da2_ptr,
    M, C, R, seed, p_drop, keep_scale, xscale,
    HAS_BD: tl.constexpr, HAS_BS: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows = tl.where(row_ok, rows, 0)
    rr = tl.arange(0, BLOCK_R)
    r_ok = rr < R
    a1 = _down(x_ptr, wd_ptr, bd_ptr, rows, row_ok, rr, C, R, HAS_BD, PRECISION, BLOCK_M, BLOCK_K, BLOCK_R)
    z1 = tl.maximum(a1, 0.0).to(x_ptr.dtype.element_ty)
    tl.store(z1_ptr + rows[:, None] * R + rr[None, :], z1, mask=row_ok[:, None] & r_ok[None, :])
    dz1 = tl.zeros((BLOCK_M, BLOCK_R), tl.float32)
    for n0 in range(0, R, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        n_ok = rn < R
        a2 = _shared_chunk(z1, ws_ptr, bs_ptr, rr, rn, R, HAS_BS, PRECISION)
        # dh[:, rn] = du @ Wu[:, rn]; up_w is (C, R).
        dh = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, C, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < C
            dut = tl.load(du_ptr + rows[:, None] * C + rk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            wut = tl.load(wu_ptr + rk[:, None] * R + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            dh = tl.dot(dut, wut, dh, input_precision=PRECISION)
        da2 = tl.where(a2 > 0, dh, 0.0)
        if DROPOUT:
            da2 = tl.where(_keep(seed, rows, rn, R, p_drop), da2 * keep_scale, 0.0)
        da2 = da2.to(x_ptr.dtype.element_ty)
        tl.store(da2_ptr + rows[:, None] * R + rn[None, :], da2, mask=row_ok[:, None] & n_ok[None, :])
        # dz1 += da2[:, rn] @ Ws[rn, :]
        wsc = tl.load(ws_ptr + rn[:, None] * R + rr[None, :], mask=n_ok[:, None] & r_ok[None, :], other=0.0)
        dz1 = tl.dot(da2, wsc, dz1, input_precision=PRECISION)
    da1 = tl.where(z1 > 0, dz1, 0.0).to(x_ptr.dtype.element_ty)
    tl.store(da1_ptr + rows[:, None] * R + rr[None, :], da1, mask=row_ok[:, None] & r_ok[None, :])
    # dx = xscale * da1 @ Wd, one BLOCK_K-wide column chunk of C at a time.
    for k0 in range(0, C, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < C
        wdt = tl.load(wd_ptr + rr[:, None] * C + rk[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        dx = tl.dot(da1, wdt, input_precision=PRECISION) * xscale
        tl.store(dx_ptr + rows[:, None] * C + rk[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & k_ok[None, :])


@triton.jit
def _dropout_keep_kernel(keep_ptr, M, R, seed, p_drop, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, rows, rn, R, p_drop)
    tl.store(keep_ptr + rows[:, None] * R + rn[None, :], keep.to(tl.int8), mask=(rows < M)[:, None] & (rn < R)[None, :])


def _meta(kernel) -> dict:
    return {} if isinstance(kernel, triton.runtime.Autotuner) else dict(_INTERPRET_BLOCKS)


def _check_dim(R: int) -> None:
    if R > MAX_DIM:
        raise ValueError(f"the Triton adapter kernels support an adapter dim up to {MAX_DIM}, got {R}")


def hidden_fwd(x, down_w, down_b, shared_w, shared_b, dropout_p: float, seed: int) -> torch.Tensor:
    """h = dropout(ReLU(S(ReLU(Down(x))))). x: (M, C) contiguous -> (M, r) in x's dtype."""
    M, C = x.shape
    R = down_w.shape[0]
    _check_dim(R)
    h = torch.empty(M, R, device=x.device, dtype=x.dtype)
    _hidden_fwd_kernel[lambda m: (triton.cdiv(M, m["BLOCK_M"]),)](
        x, down_w, down_b if down_b is not None else x, shared_w, shared_b if shared_b is not None else x, h,
        M, C, R, int(seed), float(dropout_p), 1.0 / (1.0 - dropout_p),
        HAS_BD=down_b is not None, HAS_BS=shared_b is not None, DROPOUT=dropout_p > 0,
        PRECISION=dot_precision(x.dtype), BLOCK_R=next_pow2(R), **_meta(_hidden_fwd_kernel),
    )
    return h


def hidden_bwd(x, down_w, down_b, shared_w, shared_b, up_w, du, dropout_p: float, seed: int, xscale: float):
    """Backward of the hidden chain given du (M, C). Returns (dx, z1, da1, da2); dx: (M, C), others (M, r)."""
    M, C = x.shape
    R = down_w.shape[0]
    dx = torch.empty_like(x)
    z1, da1, da2 = (torch.empty(M, R, device=x.device, dtype=x.dtype) for _ in range(3))
    _hidden_bwd_kernel[lambda m: (triton.cdiv(M, m["BLOCK_M"]),)](
        x, down_w, down_b if down_b is not None else x, shared_w, shared_b if shared_b is not None else x, up_w, du,
        dx, z1, da1, da2, M, C, R, int(seed), float(dropout_p), 1.0 / (1.0 - dropout_p), float(xscale),
        HAS_BD=down_b is not None, HAS_BS=shared_b is not None, DROPOUT=dropout_p > 0,
        PRECISION=dot_precision(x.dtype), BLOCK_R=next_pow2(R), **_meta(_hidden_bwd_kernel),
    )
    return dx, z1, da1, da2


def dropout_keep(seed: int, rows: int, dim: int, dropout_p: float, device: torch.device | str) -> torch.Tensor:
    """The boolean keep mask (rows, dim) that the kernels draw for ``seed``: feed it to the reference."""
    keep = torch.empty(rows, dim, device=device, dtype=torch.int8)
    _dropout_keep_kernel[(triton.cdiv(rows, 32), triton.cdiv(dim, 32))](
        keep, rows, dim, int(seed), float(dropout_p), BLOCK_M=32, BLOCK_N=32
    )
    return keep.bool()
