#include <gtest/gtest.h>

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
// routing_sums -> RoutingTotals -> load_balance_loss. dprobs accumulates.
float load_balance_loss(Tensor& dprobs, const Tensor& probs, const Route& r, float alpha) {
  Tensor sums = Tensor::zeros({routing_sums_size(r.num_groups)}, DType::f64, host_ctx());
  routing_sums(host_ctx(), sums, probs, r);
  const RoutingTotals t = RoutingTotals::read(sums, r.num_groups);
  return ops::load_balance_loss(host_ctx(), dprobs, t.f(), t.P(), alpha);
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

TEST(ZLoss, HandComputed) {
  // logits (0, 0): lse = ln 2; loss = beta * ln(2)^2.
  const Tensor l = zeros({1, 2});
  Tensor d = zeros({1, 2});
  EXPECT_NEAR(z_loss(host_ctx(), d, l, 0.1f), 0.1 * std::log(2.0) * std::log(2.0), 1e-6);
}

}  // namespace
}  // namespace sy::ops
