// Token-layout arithmetic of the temporal depthwise convolution, shared by the CPU and CUDA code.
//
// Layouts (see msta_fast/ops/reference.py):
//   0 "viclip": row b*L + cls + n*T + t, n = hh*W + ww   -> offsets (dt, dh, dw) move 1, W*T, T rows
//   1 "frames": row (clip*T + t)*L + cls + hh*W + ww     -> offsets move L, W, 1 rows
// No torch headers here: the .cu file that includes this compiles with plain nvcc in seconds.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MSTA_HD __host__ __device__ __forceinline__
#else
#define MSTA_HD inline
#endif

namespace msta {

struct TokenGrid {
  int64_t M;   // rows (all tokens of the batch)
  int64_t C;   // channels
  int64_t L;   // tokens per batch row
  int64_t T, H, W;
  int64_t KT, KH, KW;
  int64_t layout;   // 0 viclip, 1 frames
  int64_t has_cls;  // 0 or 1
  int64_t identity;  // 1: A = u + conv(u) (MSTA's temporal path), 0: conv(u) alone (M2-CLIP's TConv)

  MSTA_HD int64_t taps() const { return KT * KH * KW; }

  // Grid position of a row; false for class tokens.
  MSTA_HD bool coords(int64_t row, int64_t& t, int64_t& hh, int64_t& ww) const {
    const int64_t j = row % L;
    if (j < has_cls) return false;
    const int64_t p = j - has_cls;
    int64_t n;
    if (layout == 0) {
      t = p % T;
      n = p / T;
    } else {
      t = (row / L) % T;
      n = p;
    }
    hh = n / W;
    ww = n % W;
    return true;
  }

  // Row of the neighbour at tap `k` (kernel offsets centred), sign = +1 (forward) or -1 (transposed).
  MSTA_HD bool neighbour(int64_t row, int64_t t, int64_t hh, int64_t ww, int64_t k, int64_t sign,
                         int64_t& nrow) const {
    const int64_t ot = sign * (k / (KH * KW) - KT / 2);
    const int64_t oh = sign * ((k / KW) % KH - KH / 2);
    const int64_t ow = sign * (k % KW - KW / 2);
    const int64_t tn = t + ot, hn = hh + oh, wn = ww + ow;
    if (tn < 0 || tn >= T || hn < 0 || hn >= H || wn < 0 || wn >= W) return false;
    const int64_t st = layout == 0 ? 1 : L;
    const int64_t sh = layout == 0 ? W * T : W;
    const int64_t sw = layout == 0 ? T : 1;
    nrow = row + ot * st + oh * sh + ow * sw;
    return true;
  }
};

}  // namespace msta
