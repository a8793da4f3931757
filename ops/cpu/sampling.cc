#include "ops/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace sy::ops::cpu {

int32_t sample_token(Ctx&, const Tensor& probs, const SamplingParams& sp, float u) {
  const float* p = probs.f32();
  const int64_t V = sp.vocab > 0 ? sp.vocab : probs.numel();  // (the candidates: ids below V)
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  if (sp.temperature == 0.f) return order[0];
  const int64_t n = sp.top_k > 0 ? std::min<int64_t>(sp.top_k, V) : V;
  const double top = std::log(static_cast<double>(p[order[0]]));
  std::vector<double> q(n);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double pi = p[order[i]];
    q[i] = pi > 0 ? std::exp((std::log(pi) - top) / sp.temperature) : 0.0;
    total += q[i];
  }
  const double target = static_cast<double>(u) * total;
  double run = 0;
  for (int64_t i = 0; i < n; ++i) {
    run += q[i];
    if (run > target) return order[i];
  }
  return order[n - 1];  // rounding left target at the very top
}

}  // namespace sy::ops::cpu
