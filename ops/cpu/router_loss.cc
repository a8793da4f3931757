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

void load_balance_fractions(const std::vector<double>& sums, int64_t G, std::vector<double>& f,
                            std::vector<double>& P) {
  f.assign(G, 0.0);
  P.assign(G, 0.0);
  for (int64_t g = 0; g < G; ++g) {
    f[g] = sums[g] / std::max(1.0, sums[2 * G]);
    P[g] = sums[G + g] / std::max(1.0, sums[2 * G + 1]);
  }
}

namespace {
// Adds alpha G f_g / N to dprobs[i, g] for the items [i0, i1) whose statistics
// f and P are; returns sum_g f_g P_g.
double add_balance_term(std::vector<float>& dprobs, int64_t i0, int64_t i1, int64_t N, int64_t G,
                        const std::vector<double>& f, const std::vector<double>& P, float alpha) {
  double fp = 0;
  for (int64_t g = 0; g < G; ++g) {
    fp += f[g] * P[g];
    const float d = static_cast<float>(alpha * G * f[g] / N);
    for (int64_t i = i0; i < i1; ++i) dprobs[i * G + g] += d;
  }
  return fp;
}
}  // namespace

float load_balance_loss(std::vector<float>& dprobs, int64_t N, int64_t G, const std::vector<double>& f,
                        const std::vector<double>& P, float alpha) {
  dprobs.resize(N * G, 0.f);
  if (alpha == 0.f || N == 0) return 0.f;
  return static_cast<float>(alpha * G * add_balance_term(dprobs, 0, N, N, G, f, P, alpha));
}

float load_balance_loss(std::vector<float>& dprobs, const std::vector<float>& probs,
                        const Route& r, float alpha) {
  std::vector<double> f, P;
  load_balance_fractions(load_balance_sums(probs, r), r.num_groups, f, P);
  return load_balance_loss(dprobs, r.num_items, r.num_groups, f, P, alpha);
}

float load_balance_loss_grouped(std::vector<float>& dprobs, const std::vector<float>& probs,
                                const Route& r, int64_t group, float alpha) {
  const int64_t N = r.num_items, G = r.num_groups;
  dprobs.resize(N * G, 0.f);
  if (alpha == 0.f || N == 0) return 0.f;
  const int64_t S = N / group;
  double loss = 0;
  std::vector<double> f, P;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t i0 = s * group, i1 = i0 + group;
    load_balance_fractions(load_balance_sums(probs, r, i0, i1), G, f, P);
    loss += add_balance_term(dprobs, i0, i1, N, G, f, P, alpha);
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
