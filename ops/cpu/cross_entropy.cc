#include "ops/cross_entropy.h"

#include <algorithm>
#include <cmath>

namespace sy::ops::cpu {

float cross_entropy_forward(Ctx&, const CrossEntropyArgs& a) {
  const int64_t N = a.logits.dim(0), V = a.logits.dim(1);
  const int32_t* targets = a.targets.data<int32_t>();
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* l = a.logits.f32() + n * V;
    float* p = a.probs.f32() + n * V;
    const float mx = *std::max_element(l, l + V);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += (p[v] = std::exp(l[v] - mx));
    for (int64_t v = 0; v < V; ++v) p[v] = static_cast<float>(p[v] / sum);
    SY_CHECK(targets[n] >= 0 && targets[n] < V, "target " << targets[n] << " outside [0, " << V << ")");
    total += -(l[targets[n]] - mx - std::log(sum));
  }
  return static_cast<float>(total / N);
}

void cross_entropy_backward(Ctx&, const CrossEntropyBackwardArgs& a) {
  const int64_t N = a.probs.dim(0), V = a.probs.dim(1);
  const int32_t* targets = a.targets.data<int32_t>();
  const float k = a.scale / static_cast<float>(N);
  for (int64_t n = 0; n < N; ++n) {
    const float* p = a.probs.f32() + n * V;
    float* d = a.dlogits.f32() + n * V;
    for (int64_t v = 0; v < V; ++v) d[v] = k * p[v];
    d[targets[n]] -= k;
  }
}

}  // namespace sy::ops::cpu
