// Device-specific implementations of the temporal depthwise convolution in token layout.
//   forward:  A = u + conv(u) + b on patch tokens, A = u on class tokens          (M, C) -> (M, C)
//   backward: (du = g + conv^T(g), d weight (C, taps) fp32, d bias (C,) fp32)
// Without the identity (TokenGrid::identity 0) the "u +" and "g +" terms are dropped.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "token_grid.h"

namespace msta {

at::Tensor tconv_fwd_cpu(const at::Tensor& u, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                         const TokenGrid& g);
std::tuple<at::Tensor, at::Tensor, at::Tensor> tconv_bwd_cpu(const at::Tensor& grad, const at::Tensor& u,
                                                             const at::Tensor& weight, const TokenGrid& g);
at::Tensor tconv_fwd_cuda(const at::Tensor& u, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          const TokenGrid& g);
std::tuple<at::Tensor, at::Tensor, at::Tensor> tconv_bwd_cuda(const at::Tensor& grad, const at::Tensor& u,
                                                              const at::Tensor& weight, const TokenGrid& g);

}  // namespace msta
