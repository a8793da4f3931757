// The MoE layer's gradients against finite differences (router, experts
// and input; top-1 and top-2, sigmoid, shared and SwiGLU experts, group
// limits, experts of several widths under a hard budget, expert choice,
// padded layouts), padded against packed, and the first backward after
// zero_grad.
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

using moe_testing::check_layer_gradients;
using moe_testing::moe_config;
using moe_testing::randomize_biases;

TEST(MoeLayer, GradientsTop1WithLosses) {
  auto c = moe_config(3, 1);
  c.set_load_balance_coef(0.1f);
  c.set_z_loss_coef(0.05f);
  // The expected-cost loss is a function of the probabilities: finite
  // differences see it (the realised one's straight-through gradient is
  // checked in router_loss_test).
  c.set_budget_estimator(switchyard::MoeConfig::EXPECTED);
  c.set_budget_coef(0.2f);
  c.add_expert_cost(1), c.add_expert_cost(3), c.add_expert_cost(0.5);
  c.set_budget(0.5f);
  check_layer_gradients(c, 11);
}

TEST(MoeLayer, GradientsTop2RenormalizedSigmoidSharedExpert) {
  auto c = moe_config(4, 2);
  c.set_renormalize(true);
  c.set_score_function(switchyard::MoeConfig::SIGMOID);
  c.set_shared_expert(true);
  c.set_load_balance_coef(0.1f);
  check_layer_gradients(c, 12);
}

// The expected-cost budget loss over a top-2 sigmoid router's normalised
// scores (k times their expected cost), beside the balance loss over the
// same distribution.
TEST(MoeLayer, GradientsTop2SigmoidExpectedCost) {
  auto c = moe_config(4, 2);
  c.set_score_function(switchyard::MoeConfig::SIGMOID);
  c.set_load_balance_coef(0.1f);
  c.set_budget_estimator(switchyard::MoeConfig::EXPECTED);
  c.set_budget_coef(0.2f);
  c.add_expert_cost(1), c.add_expert_cost(3), c.add_expert_cost(0.5), c.add_expert_cost(2);
  c.set_budget(1.6f);  // (k = 2 distinct choices cost 1.5 to 5: active)
  check_layer_gradients(c, 13);
}

// DeepSeek-V3's sequence-wise balance: the grouped loss (runs of 5 of the
// 10 tokens) over the normalised sigmoid scores.
TEST(MoeLayer, GradientsTop2SigmoidGroupedBalance) {
  auto c = moe_config(4, 2);
  c.set_renormalize(true);
  c.set_score_function(switchyard::MoeConfig::SIGMOID);
  c.set_load_balance_coef(0.3f);
  c.set_load_balance_tokens(5);
  check_layer_gradients(c, 16);
}

// Group-limited routing changes which experts are chosen, not the function
// of the chosen ones: finite differences through a top-2 within 2 of 4
// groups, sigmoid scores renormalised.
TEST(MoeLayer, GradientsGroupLimitedTop2) {
  auto c = moe_config(8, 2);
  c.set_renormalize(true);
  c.set_score_function(switchyard::MoeConfig::SIGMOID);
  c.set_expert_groups(4);
  c.set_groups_per_token(2);
  c.set_load_balance_coef(0.1f);
  check_layer_gradients(c, 15);
}

TEST(MoeLayer, GradientsHeterogeneousExpertsUnderAHardBudget) {
  auto c = moe_config(4, 2);
  for (int h : {3, 11, 5, 7}) c.add_expert_hidden(h);
  c.set_budget_mode(switchyard::MoeConfig::HARD);
  c.set_budget(1.2f);  // costs 3/7, 11/7, 5/7, 1: some assignments dropped
  c.set_load_balance_coef(0.1f);
  check_layer_gradients(c, 14);
}

// The Mixtral MoE: softmax top-2 renormalised, SwiGLU experts, no biases.
TEST(MoeLayer, GradientsTop2RenormalizedSwigluNoBias) {
  auto c = moe_config(4, 2);
  c.set_renormalize(true);
  c.set_load_balance_coef(0.1f);
  c.set_shared_expert(true);
  check_layer_gradients(c, 14, {ops::FfnActivation::swiglu, false});
}

// SwiGLU experts of different widths (the packed layout with P_g = 2 H_g:
// w1's gate|up blocks and w2's blocks sit at different offsets), with biases.
TEST(MoeLayer, GradientsHeterogeneousSwigluExperts) {
  auto c = moe_config(4, 2);
  for (int h : {3, 11, 5, 7}) c.add_expert_hidden(h);
  c.set_load_balance_coef(0.1f);
  check_layer_gradients(c, 15, {ops::FfnActivation::swiglu, true});
}

TEST(MoeLayer, GradientsExpertChoice) {
  auto c = moe_config(3, 1);
  c.set_router(switchyard::MoeConfig::EXPERT_CHOICE);
  c.set_capacity_factor(1.0f);
  c.set_z_loss_coef(0.05f);
  check_layer_gradients(c, 13);
}

TEST(MoeLayer, GradientsPaddedTop2) {
  auto c = moe_config(4, 2);
  c.set_capacity_factor(0.75f);  // drops, and padding rows in every short expert
  c.set_padded(true);
  c.set_load_balance_coef(0.1f);
  check_layer_gradients(c, 16);
}

// Padding changes where rows sit, not what is computed: the same layer on a
// padded route (to the capacity: moe.padded; to this step's largest count:
// moe.pad_to_largest) gives the same output, input gradient and parameter
// gradients (to rounding: the weight-gradient sums see extra zero rows) as
// on the packed one, with drops, biases (padding rows' expert outputs are
// b2 + ..., never combined) and SwiGLU. At capacity factor 0.8 (capacity
// ceil(0.8 x 24 x 2 / 4) = 10, with drops) pad_to_largest's stride is the
// capacity (the largest count, 10, rounded up to 16 is capped there); at 4
// (capacity 48, no drops; no expert can hold more than the 24 tokens) it is
// the largest count rounded up to 16, below the capacity. Under a hard
// budget (which moe.padded refuses) pad_to_largest re-lays the rows the
// budget left. The model FLOPs are the packed route's with pad_to_largest,
// and with moe.padded where nothing is dropped.
TEST(MoeLayer, PaddedEqualsPacked) {
  enum Layout { packed, padded, largest };
  for (const bool hard : {false, true})
    for (const float factor : {0.8f, 4.f})
      for (const FfnOptions ffn : {FfnOptions{}, FfnOptions{ops::FfnActivation::swiglu, true}}) {
        SCOPED_TRACE("capacity factor " + std::to_string(factor) + (hard ? ", hard budget" : ""));
        std::vector<Tensor> res[3];
        double flops[3] = {0, 0, 0};
        for (const Layout layout : {packed, padded, largest}) {
          if (hard && layout == padded) continue;
          Rng rng(21);
          auto cfg = moe_config(4, 2);
          cfg.set_capacity_factor(factor);
          cfg.set_load_balance_coef(0.1f);
          cfg.set_z_loss_coef(0.01f);
          cfg.set_padded(layout == padded);
          cfg.set_pad_to_largest(layout == largest);
          if (hard) {  // every token's 2 choices cost 2 (one width: cost 1 each) > 1.2
            cfg.set_budget_mode(switchyard::MoeConfig::HARD);
            cfg.set_budget(1.2f);
          }
          ParamStore ps;
          MoeLayer moe(host_ctx(), ps, "m", 8, cfg, 16, rng, 0.4f, 0.4f, 7, nullptr, ffn);
          ps.finalize(host_ctx());
          randomize_biases(ps, rng);
          const int64_t N = 24;
          const Tensor x = testing::randn({N, 8}, rng), R = testing::randn({N, 8}, rng);
          Tensor y = moe.forward(x);
          flops[layout] = moe.forward_flops();
          const ops::Route& r = moe.route();
          EXPECT_EQ(r.padded, layout != packed);
          if (hard) EXPECT_GT(r.budget_dropped, 0) << "no budget drops: the case would not cover them";
          const int64_t limit = ops::ceil_capacity(factor, N * 2.0 / 4);
          EXPECT_EQ(moe.stats().capacity, limit);  // the limit, whatever the stride
          if (layout != packed) EXPECT_EQ(r.rows(), 4 * r.capacity);
          if (layout == packed && factor < 1) EXPECT_GT(r.dropped, 0) << "no drops: the case would not cover them";
          if (layout == largest) {  // the largest count rounded up to 16, at most the limit
            const std::vector<int32_t> count = r.count.to_vector<int32_t>();
            const int64_t most = *std::max_element(count.begin(), count.end());
            EXPECT_EQ(r.capacity, std::min<int64_t>((most + 15) / 16 * 16, limit));
            if (factor > 1)
              EXPECT_LT(r.capacity, limit) << "the stride is the limit: the case would not tell them apart";
            EXPECT_GE(r.dropped, 0);  // counted, unlike moe.padded's
          }
          ps.zero_grad(host_ctx());
          res[layout] = {y.clone(), moe.backward(R)};
          for (Param* p : ps.all()) res[layout].push_back(p->grad.clone());
        }
        ASSERT_GT(res[largest][0].numel(), 0);
        for (const Layout layout : {padded, largest}) {
          if (hard && layout == padded) continue;
          // (moe.padded counts its drops as served: they are not read back)
          if (layout == largest || factor > 1) EXPECT_DOUBLE_EQ(flops[layout], flops[packed]) << "layout " << layout;
          for (size_t i = 0; i < res[packed].size(); ++i) {
            const std::vector<float> a = res[packed][i].to_vector<float>(), b = res[layout][i].to_vector<float>();
            ASSERT_EQ(a.size(), b.size());
            double num = 0, den = 0;
            for (size_t j = 0; j < a.size(); ++j)
              num += (a[j] - b[j]) * double(a[j] - b[j]), den += double(a[j]) * a[j];
            EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), 1e-6) << "layout " << layout << ", output " << i;
          }
        }
      }
}

// pad_to_largest after a hard budget's drops (which renumber the rows before
// the padding re-lays them), with experts of several widths (per-expert
// GEMMs on padded rows).
TEST(MoeLayer, GradientsPadToLargestUnderAHardBudget) {
  auto c = moe_config(4, 2);
  for (int h : {3, 11, 5, 7}) c.add_expert_hidden(h);
  c.set_budget_mode(switchyard::MoeConfig::HARD);
  c.set_budget(1.2f);
  c.set_load_balance_coef(0.1f);
  c.set_pad_to_largest(true);
  check_layer_gradients(c, 14);
}

// ParamStore::zero_grad leaves expert gradients unwritten (marked, not
// zero-filled): the layer's next backward writes them, over whatever they
// held (NaN here), and a second backward adds to them (micro-batches), so
// one backward after zero_grad gives the same gradients whatever came before,
// and two give twice them (to rounding: the second adds its rows one by one
// onto the first's sums); finish_grads zero-fills the ones no backward wrote.
TEST(MoeLayer, FirstBackwardAfterZeroGradWritesTheExpertGradients) {
  Rng rng(41);
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", 6, moe_config(4, 2), 7, rng, 0.4f, 0.4f, 7, nullptr, {});
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  const Tensor x = testing::randn({12, 6}, rng), R = testing::randn({12, 6}, rng);
  auto grads = [&] {
    std::vector<std::vector<float>> g;
    for (Param* p : ps.all()) g.push_back(p->grad.to_vector<float>());
    return g;
  };
  auto poison = [&] {
    for (Param* p : ps.all()) p->grad.fill(std::numeric_limits<float>::quiet_NaN());
  };
  moe.forward(x);
  ps.zero_grad(host_ctx());
  moe.backward(R);
  const auto once = grads();
  int experts = 0;
  for (Param* p : ps.all()) experts += p->expert();
  ASSERT_GE(experts, 2) << "no expert parameters: the case would check nothing";
  poison();
  ps.zero_grad(host_ctx());
  for (Param* p : ps.all()) EXPECT_EQ(p->grad_unwritten, p->expert()) << p->name;
  moe.backward(R);
  EXPECT_EQ(grads(), once) << "the first backward after zero_grad did not write the gradients over NaN";
  moe.backward(R);
  const auto twice = grads();
  for (size_t i = 0; i < once.size(); ++i)
    for (size_t j = 0; j < once[i].size(); ++j)
      ASSERT_NEAR(twice[i][j], 2 * once[i][j], 1e-5 * (1 + std::fabs(once[i][j])))
          << ps.all()[i]->name << " after a second backward, element " << j;
  poison();
  ps.zero_grad(host_ctx());
  ps.finish_grads(host_ctx());  // (no backward ran)
  for (Param* p : ps.all()) {
    EXPECT_FALSE(p->grad_unwritten) << p->name;
    for (float v : p->grad.to_vector<float>()) ASSERT_EQ(v, 0.f) << p->name;
  }
}

}  // namespace
}  // namespace sy
