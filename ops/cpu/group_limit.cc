// The reference: each row's selection scores sorted within every group, the
// groups sorted by their scores (ops/group_limit.h).
#include "ops/group_limit.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace sy::ops::cpu {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
float nan_last(float x) { return std::isnan(x) ? kNegInf : x; }
// Indices of v in descending order, ties to the lower index.
std::vector<int64_t> descending(const std::vector<float>& v) {
  std::vector<int64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  return idx;
}
}  // namespace

void limit_groups(Ctx&, Tensor& out, const Tensor& key, const Tensor* bias, const GroupLimit& gl) {
  const int64_t N = key.dim(0), G = key.dim(1), R = gl.groups, M = G / R;
  std::vector<float> s(M), score(R);
  for (int64_t i = 0; i < N; ++i) {
    const float* k = key.f32() + i * G;
    for (int64_t j = 0; j < R; ++j) {
      for (int64_t m = 0; m < M; ++m) s[m] = nan_last(k[j * M + m] + (bias ? bias->f32()[j * M + m] : 0.f));
      std::sort(s.begin(), s.end(), std::greater<float>());  // (equal values: any order sums alike)
      float sum = 0.f;
      for (int64_t t = 0; t < gl.top_n; ++t) sum += s[t];  // largest first
      score[j] = nan_last(sum);
    }
    std::vector<bool> chosen(R, false);
    const std::vector<int64_t> order = descending(score);
    for (int64_t t = 0; t < gl.kept; ++t) chosen[order[t]] = true;
    for (int64_t g = 0; g < G; ++g) out.f32()[i * G + g] = chosen[g / M] ? k[g] : kNegInf;
  }
}

}  // namespace sy::ops::cpu
