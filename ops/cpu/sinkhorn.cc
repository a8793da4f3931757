// The reference: equations (1) and (2) of ops/sinkhorn.h, each
// log-sum-exp as max then sum, in double.
#include "ops/sinkhorn.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace sy::ops::cpu {

namespace {
// log sum_j exp(x_j); -inf for no finite term, NaN where a term is NaN or
// +inf (what the GPU's online softmax gives there, exp(inf - inf): both
// backends then make every h NaN, as a NaN key does).
double log_sum_exp(const std::vector<double>& x) {
  double m = -std::numeric_limits<double>::infinity();
  for (double v : x) m = std::isnan(v) ? v : std::max(m, v);
  if (std::isnan(m)) return m;
  if (m == std::numeric_limits<double>::infinity()) return std::numeric_limits<double>::quiet_NaN();
  if (std::isinf(m)) return m;  // all -inf
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  return m + std::log(s);
}
}  // namespace

void sinkhorn_balance(Ctx&, Tensor& h_out, const Tensor& keys, int iters) {
  const int64_t N = keys.dim(0), G = keys.dim(1);
  const float* a = keys.f32();
  std::vector<double> f(N), h(G, 0.0), row(G), col(N);
  const double log_n = std::log(static_cast<double>(N)), log_g = std::log(static_cast<double>(G));
  for (int t = 0; t < iters; ++t) {
    for (int64_t i = 0; i < N; ++i) {  // (1)
      for (int64_t g = 0; g < G; ++g) row[g] = a[i * G + g] + h[g];
      f[i] = -log_n - log_sum_exp(row);
    }
    for (int64_t g = 0; g < G; ++g) {  // (2)
      for (int64_t i = 0; i < N; ++i) col[i] = a[i * G + g] + f[i];
      h[g] = -log_g - log_sum_exp(col);
    }
  }
  for (int64_t g = 0; g < G; ++g) h_out.f32()[g] = static_cast<float>(h[g]);
}

}  // namespace sy::ops::cpu
