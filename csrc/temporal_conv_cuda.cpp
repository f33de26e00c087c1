// ATen wrappers of the CUDA temporal convolution launchers (compiled only in the CUDA build).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "temporal_conv.h"
#include "temporal_conv_cuda.h"

namespace msta {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "msta_fast_ext: unsupported dtype ", t.scalar_type(), " (float32, float16, bfloat16)");
  }
}

void check(int code) { TORCH_CHECK(code == 0, "msta_fast_ext CUDA kernel failed: ", cuda_error_string(code)); }

}  // namespace

at::Tensor tconv_fwd_cuda(const at::Tensor& u, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          const TokenGrid& g) {
  const c10::cuda::CUDAGuard guard(u.device());
  auto out = at::empty_like(u);
  auto w = weight.reshape({g.C, g.taps()}).to(at::kFloat).contiguous();
  at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  check(launch_tconv_fwd(dtype_of(u), u.data_ptr(), w.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr,
                         out.data_ptr(), g, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tconv_bwd_cuda(const at::Tensor& grad, const at::Tensor& u,
                                                              const at::Tensor& weight, const TokenGrid& g) {
  const c10::cuda::CUDAGuard guard(u.device());
  auto du = at::empty_like(grad);
  auto w = weight.reshape({g.C, g.taps()}).to(at::kFloat).contiguous();
  auto dw = at::zeros({g.C, g.taps()}, grad.options().dtype(at::kFloat));
  auto db = at::zeros({g.C}, grad.options().dtype(at::kFloat));
  check(launch_tconv_bwd(dtype_of(grad), grad.data_ptr(), u.data_ptr(), w.data_ptr<float>(), du.data_ptr(),
                         dw.data_ptr<float>(), db.data_ptr<float>(), g, c10::cuda::getCurrentCUDAStream().stream()));
  return {du, dw, db};
}

}  // namespace msta
