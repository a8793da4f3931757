#include "ops/router_loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sy::ops::cpu {

namespace {
// The sums of items [i0, i1) as a host vector in routing_sums' layout.
std::vector<double> sums_of(const Tensor& probs_t, const Route& r, int64_t i0, int64_t i1) {
  const int64_t G = r.num_groups, k = r.k;
  const int32_t* group = r.group.data<int32_t>();
  const int32_t* slot = r.slot.data<int32_t>();
  const float* probs = probs_t.f32();
  std::vector<double> s(routing_sums_size(G), 0.0);
  double* kept = s.data() + 2 * G;
  double* cut = s.data() + 3 * G;
  double* tail = s.data() + 4 * G;  // assigned, items, dropped, unserved, entropy, budget_dropped
  for (int64_t i = i0; i < i1; ++i) {
    bool served = false;
    for (int64_t a = i * k; a < (i + 1) * k; ++a) {
      const int32_t g = group[a];
      if (g < 0) continue;
      s[g] += 1, tail[0] += 1;
      if (slot[a] >= 0) {
        kept[g] += 1;
        served = true;
      } else if (slot[a] == -2) {
        cut[g] += 1, tail[5] += 1;
      } else {
        tail[2] += 1;
      }
    }
    tail[3] += served ? 0 : 1;
  }
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t g = 0; g < G; ++g) s[G + g] += probs[i * G + g];
  tail[1] = static_cast<double>(i1 - i0);
  for (int64_t i = i0 * G; i < i1 * G; ++i)
    if (probs[i] > 0) tail[4] -= probs[i] * std::log(probs[i]);
  return s;
}

// Adds alpha G f_g / N to dprobs[i, g] (null: nothing) for the items [i0,
// i1) whose statistics f and P are; returns sum_g f_g P_g.
double add_balance_term(float* dprobs, int64_t i0, int64_t i1, int64_t N, int64_t G, const std::vector<double>& f,
                        const std::vector<double>& P, float alpha) {
  double fp = 0;
  for (int64_t g = 0; g < G; ++g) {
    fp += f[g] * P[g];
    if (!dprobs) continue;
    const float d = static_cast<float>(alpha * G * f[g] / N);
    for (int64_t i = i0; i < i1; ++i) dprobs[i * G + g] += d;
  }
  return fp;
}
}  // namespace

void routing_sums(Ctx&, Tensor& sums, const Tensor& probs, const Route& r, int64_t i0, int64_t i1) {
  const std::vector<double> s = sums_of(probs, r, i0, i1);
  std::copy(s.begin(), s.end(), sums.data<double>());
}

void load_balance_loss(Ctx&, Tensor& dprobs, Tensor& value, const Tensor& sums, float alpha) {
  // (without dprobs: the value only, N unused)
  const int64_t N = dprobs.defined() ? dprobs.dim(0) : 1, G = (sums.numel() - routing_sums_size(0)) / 4;
  double* v = value.data<double>();
  v[0] = 0;
  if (alpha == 0.f || N == 0) return;
  const RoutingTotals t = RoutingTotals::read(sums, G);
  float* d = dprobs.defined() ? dprobs.f32() : nullptr;
  v[0] = static_cast<float>(alpha * G * add_balance_term(d, 0, N, N, G, t.f(), t.P(), alpha));
}

void routing_sums_logits(Ctx& ctx, Tensor& sums, const Tensor& logits, ScoreFn fn, const Route& r) {
  Tensor probs = Tensor::empty(logits.shape(), DType::f32, ctx);
  cpu::router_scores(ctx, probs, logits, fn);
  cpu::routing_sums(ctx, sums, probs, r, 0, r.num_items);
}

// The sequence ops/router_loss.h defines it by, exactly: what a router that
// keeps its probabilities computes (runtime/router.cc), bit for bit.
void router_backward(Ctx& ctx, Tensor& dlogits, const RouterBackwardArgs& a) {
  const Shape shape = a.logits.shape();
  Tensor probs = Tensor::empty(shape, DType::f32, ctx);
  cpu::router_scores(ctx, probs, a.logits, a.fn);
  Tensor dprobs = Tensor::zeros(shape, DType::f32, ctx), value = Tensor::empty({1}, DType::f64, ctx);
  if (a.alpha != 0.f) cpu::load_balance_loss(ctx, dprobs, value, *a.sums, a.alpha);
  cpu::route_weights_backward(ctx, dprobs, a.dweight, probs, a.route, a.renormalized);
  dlogits.zero(ctx);
  if (a.beta != 0.f) cpu::z_loss(ctx, dlogits, value, a.logits, a.beta);
  cpu::router_scores_backward(ctx, dlogits, dprobs, probs, a.fn);
}

void load_balance_loss_grouped(Ctx&, Tensor& dprobs, Tensor& value, const Tensor& probs, const Route& r,
                               int64_t group, float alpha) {
  const int64_t N = r.num_items, G = r.num_groups;
  double* v = value.data<double>();
  v[0] = 0;
  if (alpha == 0.f || N == 0) return;
  const int64_t S = N / group;
  double loss = 0;
  RoutingTotals t;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t i0 = s * group, i1 = i0 + group;
    const std::vector<double> sums = sums_of(probs, r, i0, i1);
    t.chosen.assign(sums.begin(), sums.begin() + G);
    t.prob.assign(sums.begin() + G, sums.begin() + 2 * G);
    t.assigned = sums[4 * G];
    t.items = sums[4 * G + 1];
    loss += add_balance_term(dprobs.f32(), i0, i1, N, G, t.f(), t.P(), alpha);
  }
  v[0] = static_cast<float>(alpha * G * loss / S);
}

void z_loss(Ctx&, Tensor& dlogits, Tensor& value, const Tensor& logits, float beta) {
  const int64_t N = logits.dim(0), G = logits.dim(1);
  double* v = value.data<double>();
  v[0] = 0;
  if (beta == 0.f || N == 0) return;
  // softmax(l)_g = e^(l_g - max) / s reuses the exps of the sum (one exp per
  // element; it was e^(l_g - lse), a second one).
  double loss = 0;
  std::vector<double> e(G);
  const float* lp = logits.f32();
  float* dlp = dlogits.defined() ? dlogits.f32() : nullptr;  // (undefined: the value only)
  for (int64_t i = 0; i < N; ++i) {
    const float* l = lp + i * G;
    const float mx = *std::max_element(l, l + G);
    double s = 0;
    for (int64_t g = 0; g < G; ++g) s += (e[g] = std::exp(l[g] - mx));
    const double lse = mx + std::log(s);
    loss += lse * lse;
    if (!dlp) continue;
    float* dl = dlp + i * G;
    for (int64_t g = 0; g < G; ++g) dl[g] += static_cast<float>(2.0 * beta * lse * (e[g] / s) / N);
  }
  v[0] = static_cast<float>(beta * loss / N);
}

void budget_loss(Ctx&, Tensor& dprobs, Tensor& value, const Tensor& probs_t, const std::vector<float>& cost,
                 float budget, float lambda) {
  const int64_t N = probs_t.dim(0), G = probs_t.dim(1);
  const float* probs = probs_t.f32();
  double C = 0;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t g = 0; g < G; ++g) C += probs[i * G + g] * (cost.empty() ? 1.f : cost[g]);
  C /= std::max<int64_t>(1, N);
  double* v = value.data<double>();
  v[0] = 0;
  v[1] = static_cast<float>(C);
  if (lambda == 0.f || C <= budget) return;
  float* d = dprobs.f32();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t g = 0; g < G; ++g) d[i * G + g] += lambda * (cost.empty() ? 1.f : cost[g]) / N;
  v[0] = static_cast<float>(lambda * (C - budget));
}

float realized_budget_loss(Ctx&, Tensor& dprobs, const Tensor& probs_t, const Route& r,
                           const RealizedBudgetArgs& a) {
  const int64_t N = r.num_items, k = r.k, G = r.num_groups;
  const int32_t* group = r.group.data<int32_t>();
  const int32_t* slot = r.slot.data<int32_t>();
  const float* probs = probs_t.f32();
  double R = a.realized;
  if (a.sums) {
    const RoutingTotals t = RoutingTotals::read(*a.sums, G);
    R = a.count_budget_drops ? t.cost_before_budget(a.cost) : t.realized_cost(a.cost);
  }
  const bool active = a.lambda != 0.f && R > a.budget && N > 0;
  double S = 0;
  float* d = dprobs.f32();
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = i * k + j;
      const int32_t g = group[e];
      if (g < 0 || !(slot[e] >= 0 || (a.count_budget_drops && slot[e] == -2))) continue;
      if (a.surrogate) S += static_cast<double>(probs[i * G + g]) * a.cost[g];
      if (active) d[i * G + g] += a.lambda * a.cost[g] / N;
    }
  if (a.surrogate) *a.surrogate = S / std::max<int64_t>(1, N);
  const float loss = active ? static_cast<float>(a.lambda * (R - a.budget)) : 0.f;
  if (!a.value) return loss;
  a.value->data<double>()[0] = loss;
  return 0.f;
}

}  // namespace sy::ops::cpu
