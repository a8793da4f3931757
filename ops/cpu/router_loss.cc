#include "ops/router_loss.h"

#include <algorithm>
#include <cmath>

namespace sy::ops {

std::vector<double> load_balance_sums(const std::vector<float>& probs, const Route& r, int64_t i0,
                                      int64_t i1) {
  const int64_t G = r.num_groups, k = r.k;
  if (i1 < 0) i1 = r.num_items;
  std::vector<double> s(2 * G + 2, 0.0);
  for (int64_t a = i0 * k; a < i1 * k; ++a)
    if (const int32_t g = r.group[a]; g >= 0) s[g] += 1, s[2 * G] += 1;
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t g = 0; g < G; ++g) s[G + g] += probs[i * G + g];
  s[2 * G + 1] = static_cast<double>(i1 - i0);
  return s;
}

float load_balance_loss(std::vector<float>& dprobs, int64_t N, int64_t G, const std::vector<double>& f,
                        const std::vector<double>& P, float alpha) {
  dprobs.resize(N * G, 0.f);
  if (alpha == 0.f || N == 0) return 0.f;
  double loss = 0;
  for (int64_t g = 0; g < G; ++g) {
    loss += f[g] * P[g];
    const float d = static_cast<float>(alpha * G * f[g] / N);
    for (int64_t i = 0; i < N; ++i) dprobs[i * G + g] += d;
  }
  return static_cast<float>(alpha * G * loss);
}

float load_balance_loss(std::vector<float>& dprobs, const std::vector<float>& probs,
                        const Route& r, float alpha) {
  const int64_t G = r.num_groups;
  const std::vector<double> s = load_balance_sums(probs, r);
  std::vector<double> f(G), P(G);
  for (int64_t g = 0; g < G; ++g) {
    f[g] = s[g] / std::max(1.0, s[2 * G]);
    P[g] = s[G + g] / std::max(1.0, s[2 * G + 1]);
  }
  return load_balance_loss(dprobs, r.num_items, G, f, P, alpha);
}

float load_balance_loss_grouped(std::vector<float>& dprobs, const std::vector<float>& probs,
                                const Route& r, int64_t group, float alpha) {
  const int64_t N = r.num_items, G = r.num_groups;
  dprobs.resize(N * G, 0.f);
  if (alpha == 0.f || N == 0) return 0.f;
  const int64_t S = N / group;
  double loss = 0;
  for (int64_t s = 0; s < S; ++s) {
    const std::vector<double> sums = load_balance_sums(probs, r, s * group, (s + 1) * group);
    for (int64_t g = 0; g < G; ++g) {
      const double f = sums[g] / std::max(1.0, sums[2 * G]), P = sums[G + g] / group;
      loss += f * P;
      const float d = static_cast<float>(alpha * G * f / N);
      for (int64_t i = s * group; i < (s + 1) * group; ++i) dprobs[i * G + g] += d;
    }
  }
  return static_cast<float>(alpha * G * loss / S);
}

float z_loss(std::vector<float>& dlogits, const float* logits, int64_t N, int64_t G, float beta) {
  dlogits.resize(N * G, 0.f);
  if (beta == 0.f || N == 0) return 0.f;
  double loss = 0;
  for (int64_t i = 0; i < N; ++i) {
    const float* l = logits + i * G;
    const float mx = *std::max_element(l, l + G);
    double s = 0;
    for (int64_t g = 0; g < G; ++g) s += std::exp(l[g] - mx);
    const double lse = mx + std::log(s);
    loss += lse * lse;
    for (int64_t g = 0; g < G; ++g)
      dlogits[i * G + g] += static_cast<float>(2.0 * beta * lse * std::exp(l[g] - lse) / N);
  }
  return static_cast<float>(beta * loss / N);
}

float budget_loss(std::vector<float>& dprobs, const std::vector<float>& probs, int64_t N,
                  int64_t G, const std::vector<float>& cost, float budget, float lambda,
                  float* expected) {
  dprobs.resize(N * G, 0.f);
  double C = 0;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t g = 0; g < G; ++g) C += probs[i * G + g] * (cost.empty() ? 1.f : cost[g]);
  C /= std::max<int64_t>(1, N);
  if (expected) *expected = static_cast<float>(C);
  if (lambda == 0.f || C <= budget) return 0.f;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t g = 0; g < G; ++g) dprobs[i * G + g] += lambda * (cost.empty() ? 1.f : cost[g]) / N;
  return static_cast<float>(lambda * (C - budget));
}

}  // namespace sy::ops
