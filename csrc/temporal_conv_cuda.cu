// CUDA kernels of the temporal depthwise convolution in token layout. Plain CUDA (no torch headers),
// so nvcc compiles this file in seconds; temporal_conv_cuda.cpp wraps the launchers for ATen.
//
//   forward:          A[p, c] = u[p, c] + sum_k w[c, k] u[nb(p, k), c] + b[c]      (patch p; A = u on cls)
//   input gradient:   du[q, c] = g[q, c] + sum_k w[c, k] g[nb(q, -k), c]
//   (the u[p, c] and g[q, c] terms only with g.identity)
//   weight gradient:  dw[c, k] = sum_p g[p, c] u[nb(p, k), c],  db[c] = sum_p g[p, c]
// One thread per (row, channel) for the first two (rows of C consecutive channels: coalesced);
// the reductions sum a tile of rows per thread in registers and then add atomically.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "temporal_conv_cuda.h"
#include "token_grid.h"

namespace msta {
namespace {

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 64;  // rows summed per thread in the weight-gradient reduction

template <typename T>
__global__ void tconv_fwd_kernel(const T* __restrict__ u, const float* __restrict__ w, const float* __restrict__ b,
                                 T* __restrict__ out, TokenGrid g) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= g.M * g.C) return;
  const int64_t row = idx / g.C, c = idx % g.C;
  float acc = g.identity ? to_f(u[idx]) : 0.f;
  int64_t t, hh, ww;
  if (g.coords(row, t, hh, ww)) {
    acc += b ? b[c] : 0.f;
    for (int64_t k = 0; k < g.taps(); ++k) {
      int64_t nrow;
      if (g.neighbour(row, t, hh, ww, k, 1, nrow)) acc += w[c * g.taps() + k] * to_f(u[nrow * g.C + c]);
    }
  }
  out[idx] = from_f<T>(acc);
}

template <typename T>
__global__ void tconv_bwd_input_kernel(const T* __restrict__ grad, const float* __restrict__ w, T* __restrict__ du,
                                       TokenGrid g) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= g.M * g.C) return;
  const int64_t row = idx / g.C, c = idx % g.C;
  float acc = g.identity ? to_f(grad[idx]) : 0.f;
  int64_t t, hh, ww;
  if (g.coords(row, t, hh, ww)) {
    for (int64_t k = 0; k < g.taps(); ++k) {
      int64_t nrow;
      if (g.neighbour(row, t, hh, ww, k, -1, nrow)) acc += w[c * g.taps() + k] * to_f(grad[nrow * g.C + c]);
    }
  }
  du[idx] = from_f<T>(acc);
}

// grid: (ceil(C / kThreads), ceil(M / kRowsPerBlock)); dw (C, taps) and db (C,) zero-initialised fp32.
template <typename T>
__global__ void tconv_bwd_weight_kernel(const T* __restrict__ grad, const T* __restrict__ u, float* __restrict__ dw,
                                        float* __restrict__ db, TokenGrid g) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= g.C) return;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int64_t row1 = row0 + kRowsPerBlock < g.M ? row0 + kRowsPerBlock : g.M;
  float bias_acc = 0.f;
  for (int64_t k = 0; k < g.taps(); ++k) {
    float acc = 0.f;
    for (int64_t row = row0; row < row1; ++row) {
      int64_t t, hh, ww, nrow;
      if (!g.coords(row, t, hh, ww)) continue;
      const float gv = to_f(grad[row * g.C + c]);
      if (k == 0) bias_acc += gv;
      if (g.neighbour(row, t, hh, ww, k, 1, nrow)) acc += gv * to_f(u[nrow * g.C + c]);
    }
    atomicAdd(dw + c * g.taps() + k, acc);
  }
  atomicAdd(db + c, bias_acc);
}

template <typename T>
void launch_all(const void* grad_or_u, const void* u, const float* w, const float* b, void* out, float* dw, float* db,
                const TokenGrid& g, cudaStream_t stream, int which) {
  const int64_t n = g.M * g.C;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  if (which == 0) {
    tconv_fwd_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(grad_or_u), w, b, static_cast<T*>(out), g);
  } else {
    tconv_bwd_input_kernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(grad_or_u), w,
                                                               static_cast<T*>(out), g);
    dim3 wgrid(static_cast<unsigned>((g.C + kThreads - 1) / kThreads),
               static_cast<unsigned>((g.M + kRowsPerBlock - 1) / kRowsPerBlock));
    tconv_bwd_weight_kernel<T><<<wgrid, kThreads, 0, stream>>>(static_cast<const T*>(grad_or_u),
                                                               static_cast<const T*>(u), dw, db, g);
  }
}

void dispatch(DType dtype, const void* a, const void* u, const float* w, const float* b, void* out, float* dw, float* db,
              const TokenGrid& g, void* stream, int which) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32: launch_all<float>(a, u, w, b, out, dw, db, g, s, which); break;
    case DType::kFloat16: launch_all<__half>(a, u, w, b, out, dw, db, g, s, which); break;
    case DType::kBFloat16: launch_all<__nv_bfloat16>(a, u, w, b, out, dw, db, g, s, which); break;
  }
}

}  // namespace

int launch_tconv_fwd(DType dtype, const void* u, const float* w, const float* b, void* out, const TokenGrid& g,
                     void* stream) {
  if (g.M * g.C == 0) return 0;
  dispatch(dtype, u, nullptr, w, b, out, nullptr, nullptr, g, stream, 0);
  return static_cast<int>(cudaGetLastError());
}

int launch_tconv_bwd(DType dtype, const void* grad, const void* u, const float* w, void* du, float* dw, float* db,
                     const TokenGrid& g, void* stream) {
  if (g.M * g.C == 0) return 0;
  dispatch(dtype, grad, u, w, nullptr, du, dw, db, g, stream, 1);
  return static_cast<int>(cudaGetLastError());
}

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace msta
