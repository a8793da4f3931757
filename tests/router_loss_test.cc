#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "ops/router_loss.h"

namespace sy::ops {
namespace {

using testing::zeros;

Tensor probs_of(const std::vector<float>& p, int64_t N, int64_t G) { return Tensor::from_host(p, {N, G}); }

Route tokens_choose(const Tensor& probs, const TokensChooseParams& p) {
  Route r;
  ops::tokens_choose(host_ctx(), r, probs, p);
  return r;
}

Tensor softmax_of(const Tensor& logits) {
  Tensor p = zeros(logits.shape());
  router_scores(host_ctx(), p, logits, ScoreFn::softmax);
  return p;
}

// The batch-wide load-balance loss of a route, with f and P from this batch:
// routing_sums -> load_balance_loss; its value read from the value tensor.
// dprobs accumulates.
float load_balance_loss(Tensor& dprobs, const Tensor& probs, const Route& r, float alpha) {
  Tensor sums = Tensor::zeros({routing_sums_size(r.num_groups)}, DType::f64, host_ctx());
  routing_sums(host_ctx(), sums, probs, r);
  Tensor value = Tensor::empty({1}, DType::f64, host_ctx());
  ops::load_balance_loss(host_ctx(), dprobs, value, sums, alpha);
  return static_cast<float>(value.to_vector<double>()[0]);
}

float load_balance_loss_grouped(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const Route& r, int64_t group,
                                float alpha) {
  Tensor value = Tensor::empty({1}, DType::f64, ctx);
  ops::load_balance_loss_grouped(ctx, dprobs, value, probs, r, group, alpha);
  return static_cast<float>(value.to_vector<double>()[0]);
}

float z_loss(Ctx& ctx, Tensor& dlogits, const Tensor& logits, float beta) {
  Tensor value = Tensor::empty({1}, DType::f64, ctx);
  ops::z_loss(ctx, dlogits, value, logits, beta);
  return static_cast<float>(value.to_vector<double>()[0]);
}

// The budget loss's value L_b (and C into *expected) from its value tensor.
float budget_loss(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const std::vector<float>& cost, float budget,
                  float lambda, float* expected = nullptr) {
  Tensor value = Tensor::empty({2}, DType::f64, ctx);
  ops::budget_loss(ctx, dprobs, value, probs, cost, budget, lambda);
  const std::vector<double> v = value.to_vector<double>();
  if (expected) *expected = static_cast<float>(v[1]);
  return static_cast<float>(v[0]);
}

TEST(LoadBalance, HandComputed) {
  // 2 tokens, 2 experts; both chose expert 0: f = (1, 0); P = mean p.
  const Tensor p = probs_of({0.8f, 0.2f, 0.6f, 0.4f}, 2, 2);
  Tensor d = zeros({2, 2});
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  Route r = tokens_choose(p, prm);
  float l = load_balance_loss(d, p, r, 0.5f);
  EXPECT_NEAR(l, 0.5f * 2 * (1.0f * 0.7f + 0.f * 0.3f), 1e-6);
  // Perfect balance gives alpha exactly: f = P = 1/G.
  const Tensor q = probs_of({0.5f, 0.5f, 0.5f, 0.5f}, 2, 2);
  Route rb = r;
  rb.group = Tensor::from_host(std::vector<int32_t>{0, 1});
  EXPECT_NEAR(load_balance_loss(d, q, rb, 1.f), 1.f, 1e-6);
}

TEST(LoadBalance, GroupedSeesImbalanceInsideEachSequence) {
  // 4 tokens in 2 sequences of 2, 2 experts: sequence A sends both tokens to
  // expert 0, sequence B both to expert 1. Over the batch f = P = (1/2, 1/2),
  // the balanced minimum; per sequence each is fully unbalanced.
  const Tensor p = probs_of({0.9f, 0.1f, 0.7f, 0.3f, 0.2f, 0.8f, 0.4f, 0.6f}, 4, 2);
  Tensor d = zeros({4, 2});
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  const Route r = tokens_choose(p, prm);
  ASSERT_EQ(r.group.to_vector<int32_t>(), (std::vector<int32_t>{0, 0, 1, 1}));
  EXPECT_NEAR(load_balance_loss(d, p, r, 1.f), 1.f, 1e-6);
  // A: f = (1, 0), P = (0.8, 0.2); B: f = (0, 1), P = (0.3, 0.7).
  // L = 1 * 2 * (0.8 + 0.7) / 2 = 1.5;  dL/dp_i0 = 2 f_s0 / 4.
  Tensor dg = zeros({4, 2});
  EXPECT_NEAR(load_balance_loss_grouped(host_ctx(), dg, p, r, 2, 1.f), 1.5f, 1e-6);
  EXPECT_EQ(dg.to_vector<float>(), (std::vector<float>{0.5f, 0.f, 0.5f, 0.f, 0.f, 0.5f, 0.f, 0.5f}));
  // One group of all N tokens is the ungrouped loss, gradient included.
  Tensor d1 = zeros({4, 2}), dn = zeros({4, 2});
  const float l1 = load_balance_loss(d1, p, r, 0.3f),
              ln = load_balance_loss_grouped(host_ctx(), dn, p, r, 4, 0.3f);
  EXPECT_NEAR(l1, ln, 1e-6);
  for (int64_t i = 0; i < d1.numel(); ++i) EXPECT_NEAR(d1.f32()[i], dn.f32()[i], 1e-7) << i;
}

TEST(RouterLosses, GradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(1);
  const int64_t N = 6, G = 4;
  Tensor logits = testing::randn({N, G}, rng);
  const Tensor probs = softmax_of(logits);
  TokensChooseParams prm;
  prm.k = 2;
  const Route r = tokens_choose(probs, prm);  // f is a count: fixed
  const std::vector<float> cost = {1.f, 2.f, 4.f, 8.f};
  auto total = [&](bool lb, bool z, bool b, bool lbg = false) {
    return [&, lb, z, b, lbg] {
      const Tensor p = softmax_of(logits);
      Tensor scratch = zeros({N, G});
      double s = 0;
      if (lb) s += load_balance_loss(scratch, p, r, 0.3f);
      if (lbg) s += load_balance_loss_grouped(ctx, scratch, p, r, 3, 0.3f);
      if (z) s += z_loss(ctx, scratch, logits, 0.2f);
      if (b) s += budget_loss(ctx, scratch, p, cost, 1.5f, 0.7f);
      return s;
    };
  };
  for (int which = 0; which < 4; ++which) {
    Tensor dprobs = zeros({N, G}), dlogits = zeros({N, G});
    float expected = 0;
    if (which == 0) load_balance_loss(dprobs, probs, r, 0.3f);
    if (which == 3) load_balance_loss_grouped(ctx, dprobs, probs, r, 3, 0.3f);
    if (which == 1) z_loss(ctx, dlogits, logits, 0.2f);
    if (which == 2) {
      EXPECT_GT(budget_loss(ctx, dprobs, probs, cost, 1.5f, 0.7f, &expected), 0.f);
      EXPECT_GT(expected, 1.5f);
    }
    router_scores_backward(ctx, dlogits, dprobs, probs, ScoreFn::softmax);
    const char* names[] = {"load balance", "z-loss", "budget", "grouped load balance"};
    testing::expect_gradient(names[which], logits, dlogits,
                             total(which == 0, which == 1, which == 2, which == 3), 1e-2);
  }
}

TEST(Budget, InactiveUnderBudget) {
  const Tensor p = probs_of({0.5f, 0.5f}, 1, 2);
  Tensor d = zeros({1, 2});
  float c = 0;
  EXPECT_EQ(budget_loss(host_ctx(), d, p, {1.f, 3.f}, 2.5f, 1.f, &c), 0.f);
  EXPECT_FLOAT_EQ(c, 2.f);
  EXPECT_EQ(d.to_vector<float>(), (std::vector<float>{0.f, 0.f}));
}

// By hand: 3 tokens, 2 groups of costs 1 and 3, p = (0.5, 0.5), (1, 0),
// (0.25, 0.75): C = (2 + 1 + 2.5) / 3 = 11/6; budget 1.5, lambda 0.6:
// L_b = 0.6 (11/6 - 1.5) = 0.2 and dL/dp_ig = 0.6 c_g / 3. The value lands in
// the slice of a larger tensor it is given and nowhere else; coefficient 0
// gives the value 0, C, and no gradient.
TEST(Budget, HandComputedValueInItsSlice) {
  Ctx& ctx = host_ctx();
  const Tensor p = probs_of({0.5f, 0.5f, 1.f, 0.f, 0.25f, 0.75f}, 3, 2);
  for (float lambda : {0.6f, 0.f}) {
    Tensor buf = Tensor::from_host(std::vector<double>{-7, -7, -7, -7, -7});
    Tensor value = buf.rows(2, 4);
    Tensor d = zeros({3, 2});
    ops::budget_loss(ctx, d, value, p, {1.f, 3.f}, 1.5f, lambda);
    const std::vector<double> v = buf.to_vector<double>();
    EXPECT_EQ(v[0], -7);
    EXPECT_EQ(v[1], -7);
    EXPECT_NEAR(v[2], lambda * (11.0 / 6 - 1.5), 1e-7) << "lambda " << lambda;
    EXPECT_EQ(v[2], static_cast<double>(static_cast<float>(v[2]))) << "L_b is rounded to f32";
    EXPECT_EQ(v[3], static_cast<double>(static_cast<float>(11.0 / 6)));
    EXPECT_EQ(v[4], -7);
    for (int64_t i = 0; i < 3; ++i) {
      EXPECT_FLOAT_EQ(d.f32()[2 * i], lambda * 1.f / 3) << "token " << i;
      EXPECT_FLOAT_EQ(d.f32()[2 * i + 1], lambda * 3.f / 3) << "token " << i;
    }
  }
}

// Realised cost from the routing sums, by hand: 4 tokens, top-2 over 3
// experts of costs 0.5, 1, 2, capacity 1 per expert, then a budget.
TEST(RealizedCost, HandComputedFromRoutingSums) {
  const Tensor p = probs_of({0.6f, 0.3f, 0.1f,   // t0: e0, e1
                             0.5f, 0.1f, 0.4f,   // t1: e0, e2
                             0.2f, 0.2f, 0.6f,   // t2: e2, e0 (tie with e1: the lower index)
                             0.1f, 0.7f, 0.2f},  // t3: e1, e2
                            4, 3);
  TokensChooseParams prm;
  prm.k = 2;
  prm.capacity_factor = 0.75f;  // C = ceil(0.75 * 4 * 2 / 3) = 2
  Route r = tokens_choose(p, prm);
  // First choices in position order: t0 e0, t1 e0, t2 e2, t3 e1 (all fit: e0 2/2);
  // second choices: t0 e1 (e1 2/2), t1 e2 (e2 2/2), t2 e0 or e1 (tie 0.2: e0, full: dropped), t3 e2 (full: dropped).
  ASSERT_EQ(r.group.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 0, 2, 2, 0, 1, 2}));
  ASSERT_EQ(r.slot.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 1, 1, 0, -1, 0, -1}));
  const std::vector<float> cost = {0.5f, 1.f, 2.f};
  auto totals = [&](const Route& route) {
    Tensor sums = Tensor::zeros({routing_sums_size(3)}, DType::f64, host_ctx());
    routing_sums(host_ctx(), sums, p, route);
    return RoutingTotals::read(sums, 3);
  };
  RoutingTotals t = totals(r);
  // Kept: e0 x2, e1 x2, e2 x2 -> (2 * 0.5 + 2 * 1 + 2 * 2) / 4 = 7 / 4.
  EXPECT_EQ(t.kept, (std::vector<double>{2, 2, 2}));
  EXPECT_DOUBLE_EQ(t.realized_cost(cost), 7.0 / 4);
  EXPECT_DOUBLE_EQ(t.cost_before_budget(cost), 7.0 / 4);
  EXPECT_EQ(t.dropped, 2);
  EXPECT_EQ(t.budget_dropped, 0);
  // Expected: 2 assignments per token from the mean probabilities
  // P = (1.4, 1.3, 1.3) / 4: 2 * (1.4 * 0.5 + 1.3 * 1 + 1.3 * 2) / 4 = 2.3.
  EXPECT_NEAR(t.expected_cost(cost), 2.3, 1e-6);
  // A budget of 1 per token (4 in all): drops by lowest score, ties to the
  // later assignment, among the kept ones: t2 e2 is 0.6; t0 e1 0.3; t1 e2 0.4;
  // t3 e1 0.7; t0 e0 0.6; t1 e0 0.5. Lowest: t0 e1 (0.3) -> 6, t1 e2 (0.4) -> 4: stop.
  BudgetParams b;
  b.cost = cost;
  b.budget = 1.0;
  apply_budget(host_ctx(), r, p, b);
  EXPECT_EQ(r.slot.to_vector<int32_t>(), (std::vector<int32_t>{0, -2, 1, -2, 0, -1, 0, -1}));
  t = totals(r);
  EXPECT_EQ(t.kept, (std::vector<double>{2, 1, 1}));
  EXPECT_EQ(t.cut, (std::vector<double>{0, 1, 1}));
  EXPECT_DOUBLE_EQ(t.realized_cost(cost), 4.0 / 4);
  EXPECT_DOUBLE_EQ(t.cost_before_budget(cost), 7.0 / 4);
  EXPECT_EQ(t.budget_dropped, 2);
  EXPECT_EQ(t.dropped, 2);
  EXPECT_EQ(t.unserved, 0);
}

// The straight-through realised-cost loss: value lambda (R - B) from the
// given R; gradient that of lambda S, S = sum over kept (i, g) of p_ig c_g / N,
// through the softmax, against finite differences of S with the route held
// fixed (budget drops counted, capacity drops not); zero when R <= B.
// Top-2 over the probabilities' groups at capacity factor cf, then the
// batch budget B with these costs (capacity and budget drops).
Route budgeted_route(const Tensor& probs, const std::vector<float>& cost, float cf, double B) {
  TokensChooseParams prm;
  prm.k = 2;
  prm.capacity_factor = cf;
  Route r = tokens_choose(probs, prm);
  BudgetParams b;
  b.cost = cost;
  b.budget = B;
  apply_budget(host_ctx(), r, probs, b);
  return r;
}

TEST(RealizedCost, StraightThroughGradientMatchesFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(3);
  const int64_t N = 9, G = 4;
  const std::vector<float> cost = {0.25f, 0.5f, 1.f, 2.f};
  Tensor logits = testing::randn({N, G}, rng);
  const Tensor probs = softmax_of(logits);
  const Route r = budgeted_route(probs, cost, 0.75f, 0.8);
  ASSERT_GT(r.dropped, 0);
  ASSERT_GT(r.budget_dropped, 0);
  const float lambda = 0.7f;
  for (bool with_drops : {true, false}) {
    Tensor dprobs = zeros({N, G}), dlogits = zeros({N, G});
    double S = 0;
    RealizedBudgetArgs a{cost};
    a.realized = 1.3, a.budget = 0.8f, a.lambda = lambda, a.count_budget_drops = with_drops, a.surrogate = &S;
    EXPECT_FLOAT_EQ(realized_budget_loss(ctx, dprobs, probs, r, a), lambda * (1.3f - 0.8f));
    // S by hand.
    const std::vector<int32_t> group = r.group.to_vector<int32_t>(), slot = r.slot.to_vector<int32_t>();
    double want = 0;
    for (int64_t e = 0; e < N * 2; ++e)
      if (slot[e] >= 0 || (with_drops && slot[e] == -2)) want += probs.f32()[(e / 2) * G + group[e]] * cost[group[e]];
    EXPECT_NEAR(S, want / N, 1e-9);
    router_scores_backward(ctx, dlogits, dprobs, probs, ScoreFn::softmax);
    auto surrogate = [&] {
      const Tensor p = softmax_of(logits);
      Tensor scratch = zeros({N, G});
      double s = 0;
      RealizedBudgetArgs q{cost};
      q.count_budget_drops = with_drops, q.surrogate = &s;  // lambda 0: value only
      realized_budget_loss(ctx, scratch, p, r, q);
      return lambda * s;
    };
    testing::expect_gradient(with_drops ? "realised cost, budget drops counted" : "realised cost, kept only", logits,
                             dlogits, surrogate, 1e-2);
  }
  // Under budget: no loss, no gradient.
  Tensor d = zeros({N, G});
  RealizedBudgetArgs under{cost};
  under.realized = 0.5, under.budget = 0.8f, under.lambda = lambda;
  EXPECT_EQ(realized_budget_loss(ctx, d, probs, r, under), 0.f);
  for (float v : d.to_vector<float>()) EXPECT_EQ(v, 0.f);
}

// R from routing sums (the router's device-side form) is RoutingTotals'
// cost before the budget (drops counted) or realised cost: the same value and
// gradient as passing that R, the value in the value slot, 0 returned.
TEST(RealizedCost, FromSumsIsFromTheirTotals) {
  Ctx& ctx = host_ctx();
  Rng rng(4);
  const int64_t N = 12, G = 4;
  const std::vector<float> cost = {0.25f, 0.5f, 1.f, 2.f};
  const Tensor probs = softmax_of(testing::randn({N, G}, rng));
  const Route r = budgeted_route(probs, cost, 1.25f, 0.9);
  ASSERT_GT(r.budget_dropped, 0);
  Tensor sums = Tensor::zeros({routing_sums_size(G)}, DType::f64, ctx);
  routing_sums(ctx, sums, probs, r);
  const RoutingTotals t = RoutingTotals::read(sums, G);
  for (const bool with_drops : {true, false})
    for (const float budget : {0.5f, 5.f}) {
      const double R = with_drops ? t.cost_before_budget(cost) : t.realized_cost(cost);
      Tensor d_host = zeros({N, G}), d_sums = zeros({N, G});
      RealizedBudgetArgs a{cost};
      a.realized = R, a.budget = budget, a.lambda = 0.7f, a.count_budget_drops = with_drops;
      const float want = realized_budget_loss(ctx, d_host, probs, r, a);
      Tensor value = Tensor::zeros({1}, DType::f64, ctx);
      a.realized = -1;  // unused with sums
      a.sums = &sums, a.value = &value;
      EXPECT_EQ(realized_budget_loss(ctx, d_sums, probs, r, a), 0.f);
      EXPECT_EQ(static_cast<float>(value.to_vector<double>()[0]), want);
      EXPECT_EQ(d_sums.to_vector<float>(), d_host.to_vector<float>());
      EXPECT_EQ(want > 0, budget < R);
    }
}

TEST(ZLoss, HandComputed) {
  // logits (0, 0): lse = ln 2; loss = beta * ln(2)^2.
  const Tensor l = zeros({1, 2});
  Tensor d = zeros({1, 2});
  EXPECT_NEAR(z_loss(host_ctx(), d, l, 0.1f), 0.1 * std::log(2.0) * std::log(2.0), 1e-6);
}

// router_backward against finite differences of what it is the gradient of,
// computed here in double from the logits alone: J(l) = sum_a dw_a w_a(l) +
// alpha G sum_g f_g P_g(l) + beta mean_i lse_i(l)^2, the route's groups and
// f fixed (counts), w_a = p of the assignment's group, or that over the
// item's picks' sum (renormalised); softmax and sigmoid scores.
TEST(RouterBackward, GradientOfWeightsAndLossesMatchesFiniteDifferences) {
  Ctx& ctx = host_ctx();
  const int64_t N = 6, G = 5, k = 2;
  const float alpha = 0.3f, beta = 0.2f;
  for (const ScoreFn fn : {ScoreFn::softmax, ScoreFn::sigmoid})
    for (const bool renorm : {false, true}) {
      Rng rng(7);
      Tensor logits = testing::randn({N, G}, rng);
      const Tensor dweight = testing::randn({N * k}, rng);
      TokensChooseParams prm;
      prm.k = k;
      prm.renormalize = renorm;
      Route r;
      Tensor none;
      tokens_choose_logits(ctx, r, none, logits, fn, prm);
      Tensor sums = Tensor::zeros({routing_sums_size(G)}, DType::f64, ctx);
      routing_sums_logits(ctx, sums, logits, fn, r);
      const std::vector<double> f = RoutingTotals::read(sums, G).f();
      const int32_t* group = r.group.data<int32_t>();
      auto J = [&] {
        const float* l = logits.f32();
        double total = 0, lse2 = 0;
        std::vector<double> P(G, 0.0);
        for (int64_t i = 0; i < N; ++i) {
          double mx = l[i * G], s = 0;
          for (int64_t g = 0; g < G; ++g) mx = std::max(mx, double(l[i * G + g]));
          for (int64_t g = 0; g < G; ++g) s += std::exp(l[i * G + g] - mx);
          const double lse = mx + std::log(s);
          lse2 += lse * lse;
          std::vector<double> p(G);
          for (int64_t g = 0; g < G; ++g)
            p[g] = fn == ScoreFn::softmax ? std::exp(l[i * G + g] - lse) : 1 / (1 + std::exp(-double(l[i * G + g])));
          for (int64_t g = 0; g < G; ++g) P[g] += p[g] / N;
          double S = 0;
          for (int64_t j = 0; j < k; ++j) S += p[group[i * k + j]];
          for (int64_t j = 0; j < k; ++j)
            total += dweight.f32()[i * k + j] * p[group[i * k + j]] / (renorm ? S : 1.0);
        }
        for (int64_t g = 0; g < G; ++g) total += alpha * G * f[g] * P[g];
        return total + beta * lse2 / N;
      };
      Tensor dlogits = testing::zeros({N, G});
      dlogits.fill(std::nanf(""));  // written, not added
      router_backward(ctx, dlogits, {logits, fn, r, dweight, renorm, &sums, alpha, beta});
      testing::expect_gradient(std::string(fn == ScoreFn::softmax ? "softmax" : "sigmoid") +
                                   (renorm ? " renormalised" : ""),
                               logits, dlogits, J, 1e-3, 1e-2);
    }
}

// Without their gradient tensors the load-balance and z-losses give the
// values of the full calls (a router that keeps no probabilities).
TEST(RouterLosses, ValueOnlyIsTheFullCallsValue) {
  Ctx& ctx = host_ctx();
  Rng rng(3);
  const Tensor logits = testing::randn({7, 4}, rng), probs = softmax_of(logits);
  TokensChooseParams prm;
  prm.k = 2;
  const Route r = tokens_choose(probs, prm);
  Tensor sums = Tensor::zeros({routing_sums_size(4)}, DType::f64, ctx);
  routing_sums(ctx, sums, probs, r);
  Tensor full = Tensor::empty({1}, DType::f64, ctx), only = Tensor::empty({1}, DType::f64, ctx), none;
  Tensor d = zeros({7, 4});
  ops::load_balance_loss(ctx, d, full, sums, 0.3f);
  ops::load_balance_loss(ctx, none, only, sums, 0.3f);
  EXPECT_GT(full.to_vector<double>()[0], 0.0);
  EXPECT_EQ(full.to_vector<double>()[0], only.to_vector<double>()[0]);
  ops::z_loss(ctx, d, full, logits, 0.2f);
  ops::z_loss(ctx, none, only, logits, 0.2f);
  EXPECT_GT(full.to_vector<double>()[0], 0.0);
  EXPECT_EQ(full.to_vector<double>()[0], only.to_vector<double>()[0]);
  // routing_sums_logits is router_scores then routing_sums.
  Tensor from_logits = Tensor::zeros({routing_sums_size(4)}, DType::f64, ctx);
  routing_sums_logits(ctx, from_logits, logits, ScoreFn::softmax, r);
  EXPECT_EQ(from_logits.to_vector<double>(), sums.to_vector<double>());
}

}  // namespace
}  // namespace sy::ops
