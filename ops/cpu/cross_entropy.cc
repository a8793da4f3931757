#include "ops/cross_entropy.h"

#include <algorithm>
#include <cmath>

namespace sy::ops {

float cross_entropy_forward(Tensor& probs, const Tensor& logits,
                            const std::vector<int32_t>& targets) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  check_shape(probs, logits.shape(), "cross_entropy probs");
  SY_CHECK(static_cast<int64_t>(targets.size()) == N,
           "cross_entropy: " << targets.size() << " targets for " << N << " rows");
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits.f32() + n * V;
    float* p = probs.f32() + n * V;
    float mx = *std::max_element(l, l + V);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += (p[v] = std::exp(l[v] - mx));
    for (int64_t v = 0; v < V; ++v) p[v] = static_cast<float>(p[v] / sum);
    SY_CHECK(targets[n] >= 0 && targets[n] < V, "target " << targets[n] << " outside [0, " << V << ")");
    total += -(l[targets[n]] - mx - std::log(sum));
  }
  return static_cast<float>(total / N);
}

void cross_entropy_backward(Tensor& dlogits, const Tensor& probs,
                            const std::vector<int32_t>& targets, float scale) {
  const int64_t N = probs.dim(0), V = probs.dim(1);
  check_shape(dlogits, probs.shape(), "cross_entropy dlogits");
  const float k = scale / static_cast<float>(N);
  for (int64_t n = 0; n < N; ++n) {
    const float* p = probs.f32() + n * V;
    float* d = dlogits.f32() + n * V;
    for (int64_t v = 0; v < V; ++v) d[v] = k * p[v];
    d[targets[n]] -= k;
  }
}

}  // namespace sy::ops
