"""Token-layout arithmetic shared by the Triton kernels (the Python twin of ``csrc/token_grid.h``).

Layouts (see :mod:`msta_fast.ops.reference`): ``"viclip"`` (code 0) puts a clip's patch tokens
patch-major, time-minor (row ``cls + n*T + t``); ``"frames"`` (code 1) puts each frame's tokens in its
own row block (row ``(clip*T + t)*L + cls + n``).
"""

from __future__ import annotations

import triton
import triton.language as tl

LAYOUT_CODES = {"viclip": 0, "frames": 1}


@triton.jit
def neighbour_row(rows, t, hh, ww, is_patch, ST, SH, SW, T, H, W, ot, oh, ow):
    """Row of the grid neighbour at offset (ot, oh, ow) and whether it exists."""
    tn = t + ot
    hn = hh + oh
    wn = ww + ow
    valid = is_patch & (tn >= 0) & (tn < T) & (hn >= 0) & (hn < H) & (wn >= 0) & (wn < W)
    nrows = rows + ot * ST + oh * SH + ow * SW
    return tl.where(valid, nrows, 0), valid


def row_strides(tokens: int, grid: tuple[int, int, int], layout: str) -> tuple[int, int, int]:
    """Rows between grid neighbours along t, h, w: (1, W*T, T) for "viclip", (L, W, 1) for "frames"."""
    T, _, W = grid
    return (1, W * T, T) if layout == "viclip" else (tokens, W, 1)
