#include "ops/cross_entropy.h"

#include <cmath>
#include <vector>

#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

namespace {

// Row n's stats (m_n, 1 / Z_n) with the vectorised exp and lane sums (row:
// V floats of scratch for the exponentials); returns sum_n (log Z_n - (l_y -
// m_n)), accumulated in double over rows.
SY_VECTOR_CLONES double softmax_stats(float* stats, float* row, const float* logits, const int32_t* targets, int64_t N,
                                      int64_t V) {
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits + n * V;
    const float mx = max_lanes(l, V);
    for (int64_t v = 0; v < V; ++v) row[v] = exp_approx(l[v] - mx);
    const float sum = sum_lanes(row, V);
    stats[2 * n] = mx;
    stats[2 * n + 1] = 1.f / sum;
    total += std::log(static_cast<double>(sum)) - (l[targets[n]] - mx);
  }
  return total;
}

// dlogits = k (p - onehot(y)) with p = e^(l - m) (1 / Z) recomputed: the
// forward's exponentials (the same clone of exp_approx), so p has the bits a
// saved softmax would have had.
SY_VECTOR_CLONES void softmax_grad_rows(float* d, const float* logits, const float* stats, const int32_t* targets,
                                        int64_t N, int64_t V, float k) {
  for (int64_t n = 0; n < N; ++n) {
    const float* l = logits + n * V;
    float* dn = d + n * V;
    const float mx = stats[2 * n], inv = stats[2 * n + 1];
    for (int64_t v = 0; v < V; ++v) dn[v] = k * (exp_approx(l[v] - mx) * inv);
    dn[targets[n]] -= k;
  }
}

void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t n = 0; n < N; ++n)
    SY_CHECK(targets[n] >= 0 && targets[n] < V, "target " << targets[n] << " outside [0, " << V << ")");
}

}  // namespace

float cross_entropy_forward(Ctx&, const CrossEntropyArgs& a) {
  const int64_t N = a.logits.dim(0), V = a.logits.dim(1);
  const int32_t* targets = a.targets.data<int32_t>();
  check_targets(targets, N, V);
  std::vector<float> row(static_cast<size_t>(V));
  return static_cast<float>(softmax_stats(a.stats.f32(), row.data(), a.logits.f32(), targets, N, V) / N);
}

void cross_entropy_backward(Ctx&, const CrossEntropyBackwardArgs& a) {
  const int64_t N = a.logits.dim(0), V = a.logits.dim(1);
  const int32_t* targets = a.targets.data<int32_t>();
  check_targets(targets, N, V);
  softmax_grad_rows(a.dlogits.f32(), a.logits.f32(), a.stats.f32(), targets, N, V, a.scale / static_cast<float>(N));
}

}  // namespace sy::ops::cpu
