// CPU kernels of the temporal depthwise convolution in token layout (forward, transposed, weight grad).
// The weight is transposed to (taps, C) so that every inner loop runs over contiguous channels (it vectorises;
// the (C, taps) layout made it a strided gather, slower than oneDNN's conv3d for 9-tap kernels).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "temporal_conv.h"

namespace msta {

at::Tensor tconv_fwd_cpu(const at::Tensor& u, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                         const TokenGrid& g) {
  auto out = at::empty_like(u);
  auto w = weight.reshape({g.C, g.taps()}).to(at::kFloat).t().contiguous();  // (taps, C)
  auto b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::zeros({g.C}, u.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "tconv_fwd_cpu", [&] {
    const scalar_t* up = u.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const float* wp = w.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    at::parallel_for(0, g.M, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(g.C);
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* ur = up + row * g.C;
        float* a = acc.data();
        int64_t t, hh, ww;
        const bool patch = g.coords(row, t, hh, ww);
        // A = u on class tokens, u + conv(u) + b on patch tokens.
        for (int64_t c = 0; c < g.C; ++c) a[c] = (g.identity ? static_cast<float>(ur[c]) : 0.f) + (patch ? bp[c] : 0.f);
        if (patch) {
          for (int64_t k = 0; k < g.taps(); ++k) {
            int64_t nrow;
            if (!g.neighbour(row, t, hh, ww, k, 1, nrow)) continue;
            const scalar_t* un = up + nrow * g.C;
            const float* wk = wp + k * g.C;
            for (int64_t c = 0; c < g.C; ++c) a[c] += wk[c] * static_cast<float>(un[c]);
          }
        }
        scalar_t* orow = op + row * g.C;
        for (int64_t c = 0; c < g.C; ++c) orow[c] = static_cast<scalar_t>(a[c]);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tconv_bwd_cpu(const at::Tensor& grad, const at::Tensor& u,
                                                             const at::Tensor& weight, const TokenGrid& g) {
  auto du = at::empty_like(grad);
  auto w = weight.reshape({g.C, g.taps()}).to(at::kFloat).t().contiguous();  // (taps, C)
  // Weight and bias gradients: one partial sum per chunk of rows, reduced at the end (no atomics).
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, g.M));
  auto partial = at::zeros({chunks, g.taps() + 1, g.C}, grad.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "tconv_bwd_cpu", [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* up = u.data_ptr<scalar_t>();
    scalar_t* dup = du.data_ptr<scalar_t>();
    const float* wp = w.data_ptr<float>();
    float* pp = partial.data_ptr<float>();
    at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
      std::vector<float> acc(g.C);
      for (int64_t chunk = cbegin; chunk < cend; ++chunk) {
        float* dw = pp + chunk * (g.taps() + 1) * g.C;
        float* db = dw + g.taps() * g.C;
        for (int64_t row = chunk * g.M / chunks; row < (chunk + 1) * g.M / chunks; ++row) {
          const scalar_t* gr = gp + row * g.C;
          float* a = acc.data();
          int64_t t, hh, ww;
          const bool patch = g.coords(row, t, hh, ww);
          for (int64_t c = 0; c < g.C; ++c) a[c] = g.identity ? static_cast<float>(gr[c]) : 0.f;
          if (patch) {
            for (int64_t c = 0; c < g.C; ++c) db[c] += static_cast<float>(gr[c]);
            for (int64_t k = 0; k < g.taps(); ++k) {
              int64_t nrow;
              // Transposed convolution: row q receives w[k] * g[p] from p = nb(q, -k).
              if (g.neighbour(row, t, hh, ww, k, -1, nrow)) {
                const scalar_t* gs = gp + nrow * g.C;
                const float* wk = wp + k * g.C;
                for (int64_t c = 0; c < g.C; ++c) a[c] += wk[c] * static_cast<float>(gs[c]);
              }
              // Weight gradient: dw[k] += g[p] * u[nb(p, k)].
              if (g.neighbour(row, t, hh, ww, k, 1, nrow)) {
                const scalar_t* un = up + nrow * g.C;
                float* dwk = dw + k * g.C;
                for (int64_t c = 0; c < g.C; ++c) dwk[c] += static_cast<float>(gr[c]) * static_cast<float>(un[c]);
              }
            }
          }
          scalar_t* drow = dup + row * g.C;
          for (int64_t c = 0; c < g.C; ++c) drow[c] = static_cast<scalar_t>(a[c]);
        }
      }
    });
  });
  auto sums = partial.sum(0);  // (taps + 1, C)
  auto dw = sums.narrow(0, 0, g.taps()).t().contiguous();
  auto db = sums[g.taps()].contiguous();
  return {du, dw, db};
}

}  // namespace msta
