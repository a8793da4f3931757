// The MoE layer's routing policies: group limits under noise and bias,
// the balancing bias's clean choice, random token selection, Sinkhorn
// balancing, the statistics of the last forward, dropped tokens, router and
// Gumbel noise, and load-balance token groups.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <set>

#include "grad_check.h"
#include "moe_test_util.h"
#include "ops/gelu.h"
#include "runtime/moe_layer.h"

namespace sy {
namespace {

using moe_testing::moe_config;
using moe_testing::randomize_biases;

// In training with Gumbel noise and a balancing bias (the noisy choice and
// the clean one the bias follows), every token's experts lie within its
// groups_per_token groups; without the limit most tokens here use 3 or 4.
TEST(MoeLayer, GroupLimitHoldsUnderNoiseAndBias) {
  for (int kept : {1, 2, 0}) {
    SCOPED_TRACE(::testing::Message() << "groups per token " << kept);
    Rng rng(8);
    auto cfg = moe_config(16, 4);
    cfg.set_router_noise(1.f);
    cfg.set_router_noise_kind(switchyard::MoeConfig::GUMBEL);
    cfg.set_bias_balance_rate(0.01f);
    if (kept > 0) cfg.set_expert_groups(4), cfg.set_groups_per_token(kept);
    ParamStore ps;
    MoeLayer moe(host_ctx(), ps, "m", 8, cfg, 8, rng, 0.3f, 0.3f, 7);
    ps.finalize(host_ctx());
    const int64_t N = 256;
    int64_t most = 0;
    for (int step = 0; step < 3; ++step) {
      moe.set_step(step);
      moe.forward(testing::randn({N, 8}, rng));
      moe.end_step();
      const std::vector<int32_t> group = moe.route().group.to_vector<int32_t>();
      for (int64_t i = 0; i < N; ++i) {
        std::set<int32_t> used;
        for (int j = 0; j < 4; ++j) used.insert(group[i * 4 + j] / 4);
        most = std::max<int64_t>(most, static_cast<int64_t>(used.size()));
      }
    }
    if (kept > 0)
      EXPECT_LE(most, kept);
    else
      EXPECT_GE(most, 3);  // (the check above could fail)
  }
}

// The noiseless choice the balancing bias follows is group-limited too:
// identical tokens with router logits (1, 0, 0.9, 0.9) over 2 groups of 2,
// one kept. Unlimited, the clean argmax is expert 0; limited, group 1 wins
// (e^0.9 + e^0.9 > e^1 + e^0) and its lower expert, 2, takes every token,
// so the bias goes down on expert 2 alone. (Gumbel noise in training: the
// noisy route splits the tokens between 2 and 3.)
TEST(MoeLayer, BalanceBiasFollowsTheGroupLimitedCleanChoice) {
  const int64_t N = 64, C = 4, G = 4;
  const std::vector<float> l = {1.0f, 0.f, 0.9f, 0.9f};
  Tensor x = testing::zeros({N, C});
  for (int64_t i = 0; i < N; ++i) x.f32()[i * C] = 1.f;
  for (bool limited : {true, false}) {
    SCOPED_TRACE(limited ? "limited" : "unlimited");
    auto cfg = moe_config(G, 1);
    cfg.set_router_noise(1.f);
    cfg.set_router_noise_kind(switchyard::MoeConfig::GUMBEL);
    cfg.set_bias_balance_rate(0.01f);
    if (limited) cfg.set_expert_groups(2), cfg.set_groups_per_token(1);
    ParamStore ps;
    Rng rng(6);
    MoeLayer moe(host_ctx(), ps, "m", C, cfg, 8, rng, 0.02f, 0.02f, 9);
    ps.finalize(host_ctx());
    float* wg = ps.find("m.router.w")->value.f32();
    for (int64_t a = 0; a < C * G; ++a) wg[a] = a < G ? l[a] : 0.f;
    moe.forward(x);
    moe.end_step();
    const int down = limited ? 2 : 0;
    const std::vector<float> bias = moe.balance_bias().to_vector<float>();
    for (int g = 0; g < G; ++g) EXPECT_EQ(bias[g], g == down ? -0.01f : 0.01f) << "expert " << g;
  }
}

// Random token selection (slot_priority RANDOM): 400 identical tokens all
// choose expert 0, which holds C = ceil(0.5 * 400 / 2) = 100. In training the
// 100 kept are spread over the batch (about 25 in each quarter, where
// POSITION keeps the first 100), the same at the same step and others at
// the next; in evaluation the first 100, by position.
TEST(MoeLayer, RandomTokenSelectionSpreadsTheDropsInTraining) {
  const int64_t N = 400, C = 4;
  Tensor x = testing::zeros({N, C});
  for (int64_t i = 0; i < N; ++i) x.f32()[i * C] = 1.f;
  auto cfg = moe_config(2, 1);
  cfg.set_capacity_factor(0.5f);
  cfg.set_capacity_factor_eval(0.5f);
  cfg.set_slot_priority(switchyard::MoeConfig::RANDOM);
  ParamStore ps;
  Rng rng(6);
  MoeLayer moe(host_ctx(), ps, "m", C, cfg, 8, rng, 0.02f, 0.02f, 9);
  ps.finalize(host_ctx());
  float* wg = ps.find("m.router.w")->value.f32();  // (C, G): logits (2, 0) for every token
  for (int64_t a = 0; a < C * 2; ++a) wg[a] = a == 0 ? 2.f : 0.f;
  auto kept = [&] {
    moe.forward(x);
    std::vector<int> k;
    const std::vector<int32_t> slot = moe.route().slot.to_vector<int32_t>();
    for (int64_t i = 0; i < N; ++i)
      if (slot[i] >= 0) k.push_back(static_cast<int>(i));
    return k;
  };
  moe.set_step(3);
  const std::vector<int> a = kept(), again = kept();
  ASSERT_EQ(a.size(), 100u);
  EXPECT_EQ(a, again);
  std::vector<int> quarter(4, 0);
  for (int i : a) ++quarter[i / 100];
  for (int q = 0; q < 4; ++q) EXPECT_TRUE(quarter[q] >= 10 && quarter[q] <= 40) << "quarter " << q << ": " << quarter[q];
  moe.set_step(4);
  EXPECT_NE(kept(), a);
  moe.set_training(false);
  std::vector<int> first(100);
  std::iota(first.begin(), first.end(), 0);
  EXPECT_EQ(kept(), first);
}

// Sinkhorn balancing (moe.sinkhorn_iters, ops/sinkhorn.h): 64 tokens whose
// router logits are (2 + t_i, 0), t_i spread evenly over (-0.5, 0.5), all
// prefer expert 0. By the symmetry of tests/sinkhorn_test.cc's split the
// balanced offset is h_0 - h_1 = -2, so in training the 32 tokens with
// t_i > 0 keep expert 0 and the others go to expert 1, each with its own
// probability as combine weight (the clean score, not the offset key); in
// evaluation every token takes expert 0. The same at top-1 with Gumbel
// keys would be random; without the option training sends all to 0.
TEST(MoeLayer, SinkhornBalancesTheTrainingChoiceOnly) {
  const int64_t N = 64, C = 4;
  Tensor x = testing::zeros({N, C});
  for (int64_t i = 0; i < N; ++i) {
    x.f32()[i * C] = 1.f;
    x.f32()[i * C + 1] = (static_cast<float>(i) + 0.5f) / N - 0.5f;  // t_i
  }
  for (int iters : {50, 0}) {
    SCOPED_TRACE(::testing::Message() << "sinkhorn_iters " << iters);
    auto cfg = moe_config(2, 1);
    cfg.set_sinkhorn_iters(iters);
    ParamStore ps;
    Rng rng(6);
    MoeLayer moe(host_ctx(), ps, "m", C, cfg, 8, rng, 0.02f, 0.02f, 9);
    ps.finalize(host_ctx());
    float* wg = ps.find("m.router.w")->value.f32();  // (C, G)
    for (int64_t a = 0; a < C * 2; ++a) wg[a] = 0.f;
    wg[0] = 2.f;  // x_0 -> expert 0's logit
    wg[2] = 1.f;  // x_1 = t_i -> expert 0's logit
    moe.forward(x);
    std::vector<int32_t> group = moe.route().group.to_vector<int32_t>();
    const std::vector<float> weight = moe.route().weight.to_vector<float>();
    for (int64_t i = 0; i < N; ++i) {
      const float t = x.f32()[i * C + 1], p0 = 1.f / (1.f + std::exp(-(2.f + t)));
      const int want = iters > 0 && t < 0 ? 1 : 0;
      ASSERT_EQ(group[i], want) << "token " << i;
      EXPECT_NEAR(weight[i], want == 0 ? p0 : 1.f - p0, 1e-6) << "token " << i;
    }
    moe.set_training(false);
    moe.forward(x);
    group = moe.route().group.to_vector<int32_t>();
    for (int64_t i = 0; i < N; ++i) ASSERT_EQ(group[i], 0) << "evaluation, token " << i;
  }
}

// moe.sinkhorn_at_eval: evaluation selects by the logits plus the running
// mean of the training offsets, kept in the balancing bias. Each step two
// micro-batches of 64 tokens with router logits (2 + t_i, 0): t_i spread
// evenly over (-0.5, 0.5), then the same shifted by 0.25, whose offsets are
// h_0 - h_1 = -2 and -2.25 (by the symmetry of tests/sinkhorn_test.cc's
// split), so the step's mean is -2.125. With decay 0 the bias is that mean
// and evaluation sends to expert 1 the tokens with t_i < 0.125; with decay
// 0.5 one step leaves half of it, which moves no token (2 + t - 1.06 > 0),
// and twelve steps 1 - 2^-12 of it, which moves the same ones. With router
// noise the offsets are those of the noiseless logits: the same bias.
TEST(MoeLayer, SinkhornOffsetsReachEvaluationThroughTheirMean) {
  const int64_t N = 64, C = 4;
  auto tokens = [&](float shift) {
    Tensor x = testing::zeros({N, C});
    for (int64_t i = 0; i < N; ++i) {
      x.f32()[i * C] = 1.f;
      x.f32()[i * C + 1] = (static_cast<float>(i) + 0.5f) / N - 0.5f + shift;  // t_i
    }
    return x;
  };
  const Tensor x = tokens(0.f), shifted = tokens(0.25f);
  struct Case { float decay; int steps; bool split; float noise; };
  for (const Case c : {Case{0.f, 1, true, 0.f}, Case{0.5f, 1, false, 0.f}, Case{0.5f, 12, true, 0.f},
                       Case{0.f, 1, true, 0.3f}}) {
    SCOPED_TRACE(::testing::Message() << "decay " << c.decay << ", " << c.steps << " steps, noise " << c.noise);
    auto cfg = moe_config(2, 1);
    cfg.set_sinkhorn_iters(50);
    cfg.set_sinkhorn_at_eval(true);
    cfg.set_sinkhorn_eval_decay(c.decay);
    cfg.set_router_noise(c.noise);
    ParamStore ps;
    Rng rng(6);
    MoeLayer moe(host_ctx(), ps, "m", C, cfg, 8, rng, 0.02f, 0.02f, 9);
    ps.finalize(host_ctx());
    float* wg = ps.find("m.router.w")->value.f32();  // (C, G): logits (2 + t_i, 0)
    for (int64_t a = 0; a < C * 2; ++a) wg[a] = 0.f;
    wg[0] = 2.f;
    wg[2] = 1.f;
    for (int s = 0; s < c.steps; ++s) {
      moe.set_step(s);
      for (int m = 0; m < 2; ++m) {
        moe.set_micro_batch(m, 2);
        moe.forward(m == 0 ? x : shifted);
      }
      moe.end_step();
    }
    moe.set_micro_batch(0, 1);
    const std::vector<float> bias = moe.balance_bias().to_vector<float>();
    const double share = c.decay == 0.f ? 1.0 : 1.0 - std::pow(0.5, c.steps);
    EXPECT_NEAR(bias[0] - bias[1], -2.125 * share, 1e-3);
    moe.set_training(false);
    moe.forward(x);
    const std::vector<int32_t> group = moe.route().group.to_vector<int32_t>();
    for (int64_t i = 0; i < N; ++i) {
      const bool low = x.f32()[i * C + 1] < 0.125f;
      ASSERT_EQ(group[i], c.split && low ? 1 : 0) << "token " << i;
    }
  }
}

// The router's statistics and losses stay on the device until asked for
// (runtime/router.h); asked for after a second forward, they are that
// forward's: the same as a fresh layer's on that batch alone.
TEST(MoeLayer, StatisticsAreTheLastForwards) {
  auto cfg = moe_config(4, 2);
  cfg.set_capacity_factor(0.8f);
  cfg.set_load_balance_coef(0.1f);
  cfg.set_z_loss_coef(0.01f);
  RoutingStats st[2];
  double aux[2];
  for (int fresh = 0; fresh < 2; ++fresh) {
    Rng rng(23);
    ParamStore ps;
    MoeLayer moe(host_ctx(), ps, "m", 8, cfg, 16, rng, 0.4f, 0.4f, 7);
    ps.finalize(host_ctx());
    const Tensor x1 = testing::randn({24, 8}, rng), x2 = testing::randn({24, 8}, rng, 3.f);
    if (!fresh) {
      moe.forward(x1);
      EXPECT_GT(moe.stats().lb_loss, 0.0);  // read after the first forward
    }
    moe.forward(x2);
    st[fresh] = moe.stats();
    aux[fresh] = moe.aux_loss();
  }
  EXPECT_EQ(st[0].load, st[1].load);
  EXPECT_EQ(st[0].dropped, st[1].dropped);
  EXPECT_EQ(st[0].entropy, st[1].entropy);
  EXPECT_EQ(st[0].lb_loss, st[1].lb_loss);
  EXPECT_EQ(st[0].z_loss, st[1].z_loss);
  EXPECT_EQ(aux[0], aux[1]);
  EXPECT_GT(st[1].z_loss, 0.0);
}

TEST(MoeLayer, DroppedTokensGetZeroOutput) {
  Rng rng(4);
  auto cfg = moe_config(2, 1);
  cfg.set_capacity_factor(0.25f);  // C = ceil(0.25 * 16 / 2) = 2 per expert
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", 4, cfg, 4, rng, 0.5f, 0.5f, 7);
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  Tensor y = moe.forward(testing::randn({16, 4}, rng));
  const auto& r = moe.route();
  EXPECT_EQ(r.rows(), 4);
  EXPECT_EQ(r.dropped, 12);
  const std::vector<int32_t> slot = r.slot.to_vector<int32_t>();
  for (int64_t i = 0; i < 16; ++i)
    if (slot[i] < 0)
      for (int c = 0; c < 4; ++c) EXPECT_EQ(y.f32()[i * 4 + c], 0.f);
}

// Noisy gating: identical tokens have identical logits, so without noise the
// top-1 argmax sends all of them to one expert (max/mean = G); with noise of
// std 1 (large next to the logit gaps of a std-0.02 router) they spread over
// the experts, in training only.
TEST(MoeLayer, RouterNoiseSplitsIdenticalTokensInTrainingOnly) {
  Rng rng(5);
  auto cfg = moe_config(8, 1);
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", 16, cfg, 16, rng, 0.02f, 0.02f, 7);
  ps.finalize(host_ctx());
  const int64_t N = 2048;
  Tensor row = testing::randn({1, 16}, rng), x = testing::zeros({N, 16});
  for (int64_t i = 0; i < N; ++i)
    for (int c = 0; c < 16; ++c) x.f32()[i * 16 + c] = row.f32()[c];
  moe.forward(x);
  EXPECT_DOUBLE_EQ(moe.stats().max_over_mean, 8.0);
  cfg.set_router_noise(1.f);
  ParamStore ps2;
  Rng rng2(5);
  MoeLayer noisy(host_ctx(), ps2, "m", 16, cfg, 16, rng2, 0.02f, 0.02f, 7);
  ps2.finalize(host_ctx());
  noisy.forward(x);
  EXPECT_LT(noisy.stats().max_over_mean, 1.3);
  noisy.set_training(false);
  noisy.forward(x);
  EXPECT_DOUBLE_EQ(noisy.stats().max_over_mean, 8.0);
}

// With router noise, the balancing bias follows the noiseless choice: N
// identical tokens all choose one expert without noise, so one training step
// moves that expert's bias down by the rate and every other expert's up,
// although the noisy routing spread the batch over all eight. (Moved by the
// noisy loads instead, some of the other experts would be over the mean and
// move down: that planted change fails this test.)
TEST(MoeLayer, BalanceBiasFollowsTheNoiselessChoice) {
  Rng rng(5);
  auto cfg = moe_config(8, 1);
  cfg.set_router_noise(1.f);
  cfg.set_bias_balance_rate(0.01f);
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", 16, cfg, 16, rng, 0.02f, 0.02f, 7);
  ps.finalize(host_ctx());
  const int64_t N = 2048;
  Tensor row = testing::randn({1, 16}, rng), x = testing::zeros({N, 16});
  for (int64_t i = 0; i < N; ++i)
    for (int c = 0; c < 16; ++c) x.f32()[i * 16 + c] = row.f32()[c];
  moe.forward(x);
  ASSERT_LT(moe.stats().max_over_mean, 1.3);  // the noise spread the batch
  EXPECT_EQ(moe.balance_bias().to_vector<float>(), std::vector<float>(8, 0.f));  // moves at the step's end
  moe.end_step();
  const std::vector<float> bias = moe.balance_bias().to_vector<float>();
  int down = 0;
  for (float b : bias) {
    EXPECT_TRUE(b == 0.01f || b == -0.01f) << b;
    down += b < 0;
  }
  EXPECT_EQ(down, 1);  // only the clean argmax's expert
}

// Gumbel noise at scale 1 draws each token's expert from its softmax: N
// identical tokens with known router probabilities land on expert g about
// N p_g times (within 5 binomial standard deviations), each with the clean
// p_g as its weight; at scale 0.5 the draw follows softmax(2 l), which is
// sharper; in evaluation the choice is the argmax again.
TEST(MoeLayer, GumbelNoiseSamplesExpertsFromTheRouter) {
  const int64_t N = 20000, C = 4, G = 4;
  const std::vector<float> l = {1.0f, 0.5f, 0.f, -1.f};  // router logits of every token
  Tensor x = testing::zeros({N, C});
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) x.f32()[i * C + c] = c == 0 ? 1.f : 0.f;
  auto softmax = [&](float t) {
    std::vector<double> p(G);
    double z = 0;
    for (int g = 0; g < G; ++g) z += p[g] = std::exp(l[g] / t);
    for (double& v : p) v /= z;
    return p;
  };
  auto run = [&](float scale, bool training) {
    auto cfg = moe_config(G, 1);
    cfg.set_router_noise(scale);
    cfg.set_router_noise_kind(switchyard::MoeConfig::GUMBEL);
    ParamStore ps;
    Rng rng(6);
    MoeLayer moe(host_ctx(), ps, "m", C, cfg, 8, rng, 0.02f, 0.02f, 9);
    ps.finalize(host_ctx());
    float* wg = ps.find("m.router.w")->value.f32();  // (C, G): row 0 gives the logits
    for (int64_t a = 0; a < C * G; ++a) wg[a] = a < G ? l[a] : 0.f;
    moe.set_training(training);
    moe.forward(x);
    return moe.route();
  };
  const std::vector<double> p = softmax(1.f);
  for (float scale : {1.f, 0.5f}) {
    const ops::Route r = run(scale, true);
    const std::vector<double> q = softmax(scale);
    const std::vector<int32_t> group = r.group.to_vector<int32_t>();
    const std::vector<float> weight = r.weight.to_vector<float>();
    std::vector<int64_t> n(G, 0);
    for (int64_t i = 0; i < N; ++i) {
      ++n[group[i]];
      ASSERT_NEAR(weight[i], p[group[i]], 1e-6) << "weight of token " << i;
    }
    for (int g = 0; g < G; ++g)
      EXPECT_NEAR(static_cast<double>(n[g]), N * q[g], 5 * std::sqrt(N * q[g] * (1 - q[g])))
          << "scale " << scale << ", expert " << g;
  }
  const ops::Route eval = run(1.f, false);
  const std::vector<int32_t> eval_group = eval.group.to_vector<int32_t>();
  for (int64_t i = 0; i < N; ++i) ASSERT_EQ(eval_group[i], 0);
}

TEST(MoeLayer, LoadBalanceTokensGroupsTheLoss) {
  // One group of all N tokens is the batch-wide loss; groups of N/2 see more
  // imbalance than the batch does (each half favours other experts here), and
  // a group size that does not divide N is refused.
  const int64_t N = 64, C = 8, G = 4;
  Rng data(3);
  Tensor x = testing::randn({N, C}, data);
  for (int64_t i = 0; i < N; ++i) x.f32()[i * C] += i < N / 2 ? 3.f : -3.f;
  auto lb_loss = [&](int tokens) {
    switchyard::MoeConfig cfg = moe_config(G, 1);
    cfg.set_load_balance_coef(0.01f);
    cfg.set_load_balance_tokens(tokens);
    ParamStore ps;
    Rng rng(4);
    MoeLayer moe(host_ctx(), ps, "m", C, cfg, 16, rng, 0.5f, 0.5f, 7);
    ps.finalize(host_ctx());
    moe.forward(x);
    return moe.stats().lb_loss;
  };
  EXPECT_NEAR(lb_loss(N), lb_loss(0), 1e-7);
  EXPECT_GT(lb_loss(N / 2), lb_loss(0) + 1e-4);
  EXPECT_THROW(lb_loss(24), Error);
}

// With sigmoid scores the balance loss and the entropy are over each
// token's scores divided by their sum, q = p / sum_g p (DeepSeek-V3,
// Megatron-LM), by hand: router logits 3 x over 4 experts (W = 3 I). Tokens
// spread over every expert make L = alpha G sum_g (1/G) Q_g = alpha whatever
// the scores, and the loss's gradient 0 (over raw p it was alpha sum_g P_g,
// with a gradient lowering every score); a skewed batch gives
// alpha G sum_g f_g Q_g from the q of its logits.
TEST(MoeLayer, SigmoidBalanceLossIsOverNormalisedScores) {
  const int64_t N = 4, C = 4, G = 4;
  const float alpha = 0.5f;
  auto run = [&](const std::vector<int>& expert, double* lb, double* entropy, double* grad_max,
                 std::vector<double>* q_mean) {
    auto cfg = moe_config(G, 1);
    cfg.set_score_function(switchyard::MoeConfig::SIGMOID);
    cfg.set_load_balance_coef(alpha);
    ParamStore ps;
    Rng rng(5);
    MoeLayer moe(host_ctx(), ps, "m", C, cfg, 6, rng, 0.5f, 0.5f, 7);
    ps.finalize(host_ctx());
    float* w = ps.find("m.router.w")->value.f32();  // (C, G)
    std::fill_n(w, C * G, 0.f);
    for (int64_t g = 0; g < G; ++g) w[g * G + g] = 3.f;
    Tensor x = testing::zeros({N, C});
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < C; ++c) x.f32()[i * C + c] = c == expert[i] ? 1.f + 0.1f * i : -0.2f * (c + i);
    moe.forward(x);
    const std::vector<int32_t> group = moe.route().group.to_vector<int32_t>();
    for (int64_t i = 0; i < N; ++i) EXPECT_EQ(group[i], expert[i]) << "token " << i;
    *lb = moe.stats().lb_loss;
    *entropy = moe.stats().entropy;
    q_mean->assign(G, 0.0);
    double h = 0;
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> p(G);
      double sum = 0;
      for (int64_t g = 0; g < G; ++g) sum += (p[g] = 1 / (1 + std::exp(-3.0 * x.f32()[i * C + g])));
      for (int64_t g = 0; g < G; ++g) (*q_mean)[g] += p[g] / sum / N, h -= p[g] / sum * std::log(p[g] / sum) / N;
    }
    EXPECT_NEAR(*entropy, h, 1e-5);
    // The balance loss alone (no output gradient): its gradient on the router.
    ps.zero_grad(host_ctx());
    moe.backward(testing::zeros({N, C}));
    *grad_max = 0;
    const Tensor& dw = ps.find("m.router.w")->grad;
    for (int64_t e = 0; e < C * G; ++e) *grad_max = std::max(*grad_max, std::fabs(double(dw.f32()[e])));
  };
  double lb, entropy, grad_max;
  std::vector<double> Q;
  run({0, 1, 2, 3}, &lb, &entropy, &grad_max, &Q);
  EXPECT_NEAR(lb, alpha, 1e-6);
  EXPECT_LT(grad_max, 1e-7);
  run({0, 0, 1, 2}, &lb, &entropy, &grad_max, &Q);
  EXPECT_NEAR(lb, alpha * G * (0.5 * Q[0] + 0.25 * Q[1] + 0.25 * Q[2]), 1e-6);
  EXPECT_GT(grad_max, 1e-3);  // (the gradient check above could fail)
}

// The realised-cost budget loss's straight-through gradient, with sigmoid
// scores, is over q = p / sum p like the balance loss's: it shifts a token's
// scores toward cheaper experts and leaves their scale alone (sum_j p_j dp_j
// = 0 a row). Over raw p it only lowered the kept scores, and every score
// drifted down. Router W = I, so the input gradient is dlogits; no output
// gradient, so it is the budget loss's alone.
TEST(MoeLayer, SigmoidBudgetGradientMovesNoScale) {
  const int64_t N = 8, C = 4, G = 4;
  auto cfg = moe_config(G, 1);
  cfg.set_score_function(switchyard::MoeConfig::SIGMOID);
  for (int h : {4, 4, 16, 16}) cfg.add_expert_hidden(h);  // costs 0.5, 0.5, 2, 2 (F 8)
  cfg.set_budget(1.f);
  cfg.set_budget_coef(0.5f);
  ParamStore ps;
  Rng rng(9);
  MoeLayer moe(host_ctx(), ps, "m", C, cfg, 8, rng, 0.5f, 0.5f, 7);
  ps.finalize(host_ctx());
  float* w = ps.find("m.router.w")->value.f32();
  std::fill_n(w, C * G, 0.f);
  for (int64_t g = 0; g < G; ++g) w[g * G + g] = 1.f;
  Tensor x = testing::randn({N, C}, rng);
  for (int64_t i = 0; i < N; ++i) x.f32()[i * C + 2 + i % 2] += 3.f;  // the costly experts: R = 2 > B
  moe.forward(x);
  EXPECT_GT(moe.stats().realized_cost, 1.5);
  EXPECT_GT(moe.stats().budget_loss, 0.0);
  const Tensor dx = moe.backward(testing::zeros({N, C}));
  double largest = 0;
  for (int64_t i = 0; i < N; ++i) {
    double along = 0;  // sum_j p_j dp_j, dp_j = dl_j / (p_j (1 - p_j))
    for (int64_t j = 0; j < G; ++j) {
      const double p = 1 / (1 + std::exp(-double(x.f32()[i * C + j]))), dl = dx.f32()[i * C + j];
      along += dl / (1 - p);
      largest = std::max(largest, std::fabs(dl));
    }
    EXPECT_NEAR(along, 0.0, 1e-6) << "token " << i;
  }
  EXPECT_GT(largest, 1e-3);  // (the loss moved the scores)
}

}  // namespace
}  // namespace sy
