#include <gtest/gtest.h>

#include "grad_check.h"
#include "ops/router_loss.h"

namespace sy::ops {
namespace {

TEST(LoadBalance, HandComputed) {
  // 2 tokens, 2 experts; both chose expert 0: f = (1, 0); P = mean p.
  std::vector<float> p = {0.8f, 0.2f, 0.6f, 0.4f}, d;
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  Route r = tokens_choose(p, 2, 2, prm);
  float l = load_balance_loss(d, p, r, 0.5f);
  EXPECT_NEAR(l, 0.5f * 2 * (1.0f * 0.7f + 0.f * 0.3f), 1e-6);
  // Perfect balance gives alpha exactly: f = P = 1/G.
  std::vector<float> q = {0.5f, 0.5f, 0.5f, 0.5f};
  Route rb = r;
  rb.group = {0, 1};
  EXPECT_NEAR(load_balance_loss(d, q, rb, 1.f), 1.f, 1e-6);
}

TEST(LoadBalance, GroupedSeesImbalanceInsideEachSequence) {
  // 4 tokens in 2 sequences of 2, 2 experts: sequence A sends both tokens to
  // expert 0, sequence B both to expert 1. Over the batch f = P = (1/2, 1/2),
  // the balanced minimum; per sequence each is fully unbalanced.
  std::vector<float> p = {0.9f, 0.1f, 0.7f, 0.3f, 0.2f, 0.8f, 0.4f, 0.6f}, d;
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  const Route r = tokens_choose(p, 4, 2, prm);
  ASSERT_EQ(r.group, (std::vector<int32_t>{0, 0, 1, 1}));
  EXPECT_NEAR(load_balance_loss(d, p, r, 1.f), 1.f, 1e-6);
  // A: f = (1, 0), P = (0.8, 0.2); B: f = (0, 1), P = (0.3, 0.7).
  // L = 1 * 2 * (0.8 + 0.7) / 2 = 1.5;  dL/dp_i0 = 2 f_s0 / 4.
  std::vector<float> dg;
  EXPECT_NEAR(load_balance_loss_grouped(dg, p, r, 2, 1.f), 1.5f, 1e-6);
  EXPECT_EQ(dg, (std::vector<float>{0.5f, 0.f, 0.5f, 0.f, 0.f, 0.5f, 0.f, 0.5f}));
  // One group of all N tokens is the ungrouped loss, gradient included.
  std::vector<float> d1, dn;
  const float l1 = load_balance_loss(d1, p, r, 0.3f), ln = load_balance_loss_grouped(dn, p, r, 4, 0.3f);
  EXPECT_NEAR(l1, ln, 1e-6);
  for (size_t i = 0; i < d1.size(); ++i) EXPECT_NEAR(d1[i], dn[i], 1e-7) << i;
}

TEST(RouterLosses, GradientsMatchFiniteDifferences) {
  Rng rng(1);
  const int64_t N = 6, G = 4;
  Tensor logits = testing::randn({N, G}, rng);
  std::vector<float> probs;
  router_scores(probs, logits.f32(), N, G, ScoreFn::softmax);
  TokensChooseParams prm;
  prm.k = 2;
  const Route r = tokens_choose(probs, N, G, prm);  // f is a count: fixed
  const std::vector<float> cost = {1.f, 2.f, 4.f, 8.f};
  auto total = [&](bool lb, bool z, bool b, bool lbg = false) {
    return [&, lb, z, b, lbg] {
      std::vector<float> p, scratch;
      router_scores(p, logits.f32(), N, G, ScoreFn::softmax);
      double s = 0;
      if (lb) s += load_balance_loss(scratch, p, r, 0.3f);
      if (lbg) s += load_balance_loss_grouped(scratch, p, r, 3, 0.3f);
      if (z) s += z_loss(scratch, logits.f32(), N, G, 0.2f);
      if (b) s += budget_loss(scratch, p, N, G, cost, 1.5f, 0.7f);
      return s;
    };
  };
  for (int which = 0; which < 4; ++which) {
    std::vector<float> dprobs(N * G, 0.f), dlogits(N * G, 0.f);
    float expected = 0;
    if (which == 0) load_balance_loss(dprobs, probs, r, 0.3f);
    if (which == 3) load_balance_loss_grouped(dprobs, probs, r, 3, 0.3f);
    if (which == 1) z_loss(dlogits, logits.f32(), N, G, 0.2f);
    if (which == 2) {
      EXPECT_GT(budget_loss(dprobs, probs, N, G, cost, 1.5f, 0.7f, &expected), 0.f);
      EXPECT_GT(expected, 1.5f);
    }
    router_scores_backward(dlogits, dprobs, probs, N, G, ScoreFn::softmax);
    Tensor d({N, G});
    std::copy(dlogits.begin(), dlogits.end(), d.f32());
    const char* names[] = {"load balance", "z-loss", "budget", "grouped load balance"};
    testing::expect_gradient(names[which], logits, d,
                             total(which == 0, which == 1, which == 2, which == 3), 1e-2);
  }
}

TEST(Budget, InactiveUnderBudget) {
  std::vector<float> p = {0.5f, 0.5f}, d;
  float c = 0;
  EXPECT_EQ(budget_loss(d, p, 1, 2, {1.f, 3.f}, 2.5f, 1.f, &c), 0.f);
  EXPECT_FLOAT_EQ(c, 2.f);
  EXPECT_EQ(d, (std::vector<float>{0.f, 0.f}));
}

TEST(ZLoss, HandComputed) {
  // logits (0, 0): lse = ln 2; loss = beta * ln(2)^2.
  std::vector<float> l = {0.f, 0.f}, d;
  EXPECT_NEAR(z_loss(d, l.data(), 1, 2, 0.1f), 0.1 * std::log(2.0) * std::log(2.0), 1e-6);
}

}  // namespace
}  // namespace sy::ops
