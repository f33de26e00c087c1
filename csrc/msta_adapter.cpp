// The MSTA adapter op of the C++/CUDA extension: schemas (TORCH_LIBRARY) and the device-generic
// forward and backward, which use ATen GEMMs and the token-layout temporal convolution
// (temporal_conv_cpu.cpp, temporal_conv_cuda.cpp). Math: msta_fast/ops/reference.py.
//
//   adapter_fwd -> (out, z1, h):  z1 = ReLU(x Wd^T + bd), h = keep * ReLU(z1 Ws^T + bs) / (1 - p),
//                                 u = h Wu^T + bu, out = residual + s * (u + TConv(u))
//   adapter_bwd -> [dx, dWd, dbd, dWs, dbs, dWu, dbu, dWconv, dbconv] (empty tensors for absent ones)
// The ReLU and dropout masks of the backward come from z1 > 0 and h > 0 (h > 0 iff kept and a2 > 0).
// x and the gradients are (tokens, C) matrices: the GEMMs are plain mm.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "temporal_conv.h"

namespace msta {
namespace {

TokenGrid make_grid(const at::Tensor& u, const at::Tensor& conv_w, at::IntArrayRef grid, int64_t layout, bool has_cls,
                    int64_t tokens, bool identity) {
  TORCH_CHECK(grid.size() == 3, "msta_fast_ext: grid must be (T, H, W), got ", grid.size(), " values");
  TORCH_CHECK(conv_w.dim() == 5 && conv_w.size(1) == 1, "msta_fast_ext: conv weight must be (C, 1, kT, kH, kW)");
  TORCH_CHECK(layout == 0 || layout == 1, "msta_fast_ext: layout must be 0 (viclip) or 1 (frames)");
  return TokenGrid{u.size(0), u.size(1), tokens, grid[0], grid[1], grid[2], conv_w.size(2), conv_w.size(3),
                   conv_w.size(4), layout, has_cls ? 1 : 0, identity ? 1 : 0};
}

}  // namespace

at::Tensor tconv_fwd(const at::Tensor& u, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     at::IntArrayRef grid, int64_t layout, bool has_cls, int64_t tokens, bool identity) {
  const auto g = make_grid(u, weight, grid, layout, has_cls, tokens, identity);
  auto uc = u.contiguous();
  return u.is_cuda() ? tconv_fwd_cuda(uc, weight, bias, g) : tconv_fwd_cpu(uc, weight, bias, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tconv_bwd(const at::Tensor& grad, const at::Tensor& u,
                                                         const at::Tensor& weight, at::IntArrayRef grid, int64_t layout,
                                                         bool has_cls, int64_t tokens, bool identity) {
  const auto g = make_grid(u, weight, grid, layout, has_cls, tokens, identity);
  auto gc = grad.contiguous();
  auto uc = u.contiguous();
  return u.is_cuda() ? tconv_bwd_cuda(gc, uc, weight, g) : tconv_bwd_cpu(gc, uc, weight, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_fwd(
    const at::Tensor& x, const at::Tensor& down_w, const c10::optional<at::Tensor>& down_b, const at::Tensor& shared_w,
    const c10::optional<at::Tensor>& shared_b, const at::Tensor& up_w, const c10::optional<at::Tensor>& up_b,
    const c10::optional<at::Tensor>& conv_w, const c10::optional<at::Tensor>& conv_b,
    const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& keep, double scale,
    double dropout_p, at::IntArrayRef grid, int64_t layout, bool has_cls, int64_t tokens, bool grad_scale) {
  // grad_scale does not change the forward; it is in the schema so that the autograd formula sees it.
  (void)grad_scale;
  TORCH_CHECK(x.dim() == 2, "msta_fast_ext::adapter_fwd: x must be (tokens, C), got ", x.sizes());
  // In place where a tensor is a fresh temporary: one pass over memory fewer per step than the eager chain.
  auto z1 = at::linear(x, down_w, down_b).relu_();
  auto h = at::linear(z1, shared_w, shared_b).relu_();
  if (keep.has_value()) h.mul_(*keep).mul_(1.0 / (1.0 - dropout_p));
  auto a = at::linear(h, up_w, up_b);
  if (conv_w.has_value()) a = tconv_fwd(a, *conv_w, conv_b, grid, layout, has_cls, tokens, true);
  auto out = residual.has_value() ? at::add(*residual, a, scale) : a.mul_(scale);
  return {out, z1, h};
}

std::vector<at::Tensor> adapter_bwd(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& z1, const at::Tensor& h, const at::Tensor& down_w,
    bool has_down_b, const at::Tensor& shared_w, bool has_shared_b, const at::Tensor& up_w,
    const c10::optional<at::Tensor>& up_b, const c10::optional<at::Tensor>& conv_w, bool has_conv_b, double scale,
    bool grad_scale, double dropout_p, at::IntArrayRef grid, int64_t layout, bool has_cls, int64_t tokens) {
  // With gradient scaling the parameters see dL/dA = grad and x sees s times the chain's gradient;
  // without it the parameters see s * grad.
  const double gscale = grad_scale ? 1.0 : scale;
  const double xscale = grad_scale ? scale : 1.0;
  auto ga = grad.to(x.scalar_type());  // no copy when the dtypes agree
  if (gscale != 1.0) ga = ga * gscale;
  auto empty = [&] { return at::empty({0}, x.options()); };
  auto bias_grad = [&](const at::Tensor& g, bool has) {
    return has ? g.sum(0, false, at::kFloat).to(x.scalar_type()) : empty();
  };
  at::Tensor du = ga, dconv_w = empty(), dconv_b = empty();
  if (conv_w.has_value()) {
    auto u = at::linear(h, up_w, up_b);  // recomputed: cheaper than keeping (tokens, C) alive
    auto [du_, dw, db] = tconv_bwd(ga, u, *conv_w, grid, layout, has_cls, tokens, true);
    du = du_;
    dconv_w = dw.reshape(conv_w->sizes()).to(conv_w->scalar_type());
    if (has_conv_b) dconv_b = db.to(conv_w->scalar_type());
  }
  // ReLU masks in one pass each (threshold_backward, as autograd's ReLU); the input-gradient scale goes on the
  // (r, C) weight instead of the (tokens, C) result.
  auto dh = at::mm(du, up_w);
  auto da2 = at::threshold_backward(dh, h, 0);
  if (dropout_p > 0) da2.mul_(1.0 / (1.0 - dropout_p));
  auto dz1 = at::mm(da2, shared_w);
  auto da1 = at::threshold_backward(dz1, z1, 0);
  auto dx = at::mm(da1, xscale != 1.0 ? down_w * xscale : down_w);
  return {dx,
          at::mm(da1.t(), x),
          bias_grad(da1, has_down_b),
          at::mm(da2.t(), z1),
          bias_grad(da2, has_shared_b),
          at::mm(du.t(), h),
          bias_grad(du, up_b.has_value()),
          dconv_w,
          dconv_b};
}

}  // namespace msta

TORCH_LIBRARY(msta_fast_ext, m) {
  m.def(
      "tconv_fwd(Tensor u, Tensor weight, Tensor? bias, int[] grid, int layout, bool has_cls, int tokens,"
      " bool identity=True) -> Tensor");
  m.def(
      "tconv_bwd(Tensor grad, Tensor u, Tensor weight, int[] grid, int layout, bool has_cls, int tokens,"
      " bool identity=True) -> (Tensor, Tensor, Tensor)");
  m.def(
      "adapter_fwd(Tensor x, Tensor down_w, Tensor? down_b, Tensor shared_w, Tensor? shared_b, Tensor up_w,"
      " Tensor? up_b, Tensor? conv_w, Tensor? conv_b, Tensor? residual, Tensor? keep, float scale,"
      " float dropout_p, int[] grid, int layout, bool has_cls, int tokens, bool grad_scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "adapter_bwd(Tensor grad, Tensor x, Tensor z1, Tensor h, Tensor down_w, bool has_down_b, Tensor shared_w,"
      " bool has_shared_b, Tensor up_w, Tensor? up_b, Tensor? conv_w, bool has_conv_b, float scale,"
      " bool grad_scale, float dropout_p, int[] grid, int layout, bool has_cls, int tokens) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(msta_fast_ext, CompositeExplicitAutograd, m) {
  m.impl("tconv_fwd", &msta::tconv_fwd);
  m.impl("tconv_bwd", &msta::tconv_bwd);
  m.impl("adapter_fwd", &msta::adapter_fwd);
  m.impl("adapter_bwd", &msta::adapter_bwd);
}

#ifndef MSTA_WITH_CUDA
// CPU-only build: CUDA tensors get a clear error instead of a missing symbol.
namespace msta {
at::Tensor tconv_fwd_cuda(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, const TokenGrid&) {
  TORCH_CHECK(false, "msta_fast_ext was built without CUDA; rebuild with a CUDA toolkit to use CUDA tensors");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> tconv_bwd_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const TokenGrid&) {
  TORCH_CHECK(false, "msta_fast_ext was built without CUDA; rebuild with a CUDA toolkit to use CUDA tensors");
}
}  // namespace msta
#endif
