#include "ops/cross_entropy.h"

#include <cmath>

#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

namespace {

// Row n of probs = softmax(logits row n) with the vectorised exp and lane
// sums; returns sum_n -log p[n, y_n] = sum_n (log sum_v e^(l_v - max) - (l_y - max)),
// accumulated in double over rows.
SY_VECTOR_CLONES double softmax_rows(float* probs, const float* logits, const int32_t* targets, int64_t N, int64_t V) {
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits + n * V;
    float* p = probs + n * V;
    const float mx = max_lanes(l, V);
    for (int64_t v = 0; v < V; ++v) p[v] = exp_approx(l[v] - mx);
    const float sum = sum_lanes(p, V);
    const float inv = 1.f / sum;
    for (int64_t v = 0; v < V; ++v) p[v] *= inv;
    total += std::log(static_cast<double>(sum)) - (l[targets[n]] - mx);
  }
  return total;
}

}  // namespace

float cross_entropy_forward(Ctx&, const CrossEntropyArgs& a) {
  const int64_t N = a.logits.dim(0), V = a.logits.dim(1);
  const int32_t* targets = a.targets.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    SY_CHECK(targets[n] >= 0 && targets[n] < V, "target " << targets[n] << " outside [0, " << V << ")");
  return static_cast<float>(softmax_rows(a.probs.f32(), a.logits.f32(), targets, N, V) / N);
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
