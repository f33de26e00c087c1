// Launchers of the CUDA temporal convolution kernels: raw pointers, no torch types, so that the .cu
// compiles with plain nvcc. Return a cudaError_t code (0 = success).
#pragma once
#include "token_grid.h"

namespace msta {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// w: (C, taps) fp32, b: (C,) fp32 or nullptr.
int launch_tconv_fwd(DType dtype, const void* u, const float* w, const float* b, void* out, const TokenGrid& g,
                     void* stream);
// dw: (C, taps) and db: (C,) fp32, zero-initialised; accumulated atomically.
int launch_tconv_bwd(DType dtype, const void* grad, const void* u, const float* w, void* du, float* dw, float* db,
                     const TokenGrid& g, void* stream);
const char* cuda_error_string(int code);

}  // namespace msta
