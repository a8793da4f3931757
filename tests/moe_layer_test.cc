// The MoE layer: equivalences with the dense FFN and with the weighted sum of
// all experts, and finite-difference gradients for router, experts and input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <set>

#include "cuda_fixture.h"
#include "grad_check.h"
#include "ops/gelu.h"
#include "runtime/moe_layer.h"

namespace sy {
namespace {

switchyard::MoeConfig moe_config(int G, int k) {
  switchyard::MoeConfig c;
  c.set_num_experts(G);
  c.set_top_k(k);
  c.set_capacity_factor(static_cast<float>(G));  // room for every token
  c.set_capacity_factor_eval(static_cast<float>(G));
  c.set_load_balance_coef(0.f);
  c.set_z_loss_coef(0.f);
  return c;
}

// Expert g applied to one row: gelu(x W1 + b1) W2 + b2; S = the hidden
// widths of the experts before g (the packed layout, ops/expert_ffn.h).
std::vector<float> expert_row(ParamStore& ps, const std::string& name, int g, const float* x, int64_t C,
                              int64_t H, int64_t S = -1) {
  if (S < 0) S = g * H;  // equal widths
  const float* w1 = ps.find(name + ".experts.w1")->value.f32() + C * S;
  const float* b1 = ps.find(name + ".experts.b1")->value.f32() + S;
  const float* w2 = ps.find(name + ".experts.w2")->value.f32() + S * C;
  const float* b2 = ps.find(name + ".experts.b2")->value.f32() + g * C;
  std::vector<float> h(H), y(C);
  for (int64_t j = 0; j < H; ++j) {
    h[j] = b1[j];
    for (int64_t c = 0; c < C; ++c) h[j] += x[c] * w1[c * H + j];
  }
  Tensor at = testing::zeros({H});
  ops::gelu_forward(host_ctx(), at, Tensor::from_host(h));
  const float* a = at.f32();
  for (int64_t c = 0; c < C; ++c) {
    y[c] = b2[c];
    for (int64_t j = 0; j < H; ++j) y[c] += a[j] * w2[j * C + c];
  }
  return y;
}

void randomize_biases(ParamStore& ps, Rng& rng) {
  for (Param* p : ps.all())
    if (p->name.find(".b") != std::string::npos) testing::fill_normal(p->value, rng, 0.1f);
}

TEST(MoeLayer, OneExpertEqualsDenseFfn) {
  Rng rng(1);
  const int64_t C = 8, H = 12, N = 9;
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", C, moe_config(1, 1), H, rng, 0.3f, 0.3f, 7);
  Mlp mlp(host_ctx(), ps, "d", C, H, rng, 0.3f, 0.3f);
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  // Same weights in both.
  for (const char* s : {"w1", "b1", "w2", "b2"}) {
    Param* src = ps.find(std::string("m.experts.") + s);
    std::string dn = std::string("d.fc") + (s[1] == '1' ? "1" : "2") + (s[0] == 'w' ? ".w" : ".b");
    Param* dst = ps.find(dn);
    ASSERT_EQ(src->value.numel(), dst->value.numel()) << dn;
    std::copy_n(src->value.f32(), src->value.numel(), dst->value.f32());
  }
  Tensor x = testing::randn({N, C}, rng);
  Tensor a = moe.forward(x), b = mlp.forward(x);
  for (int64_t i = 0; i < N * C; ++i) EXPECT_NEAR(a.f32()[i], b.f32()[i], 1e-5f);
  EXPECT_EQ(moe.stats().dropped, 0);
}

// bf16 mode: one expert is the dense MLP with the same weights, forward and
// backward, as both round the same operands and (GELU) the same
// pre-activation and its gradient (ops/expert_ffn.h, runtime/layers.h); the
// sums differ only in BLAS's order. A path that kept pre or dact in f32
// would differ by a bf16 step (~4e-3 relative) somewhere. One difference is
// by design: the experts' output gradient comes rounded from combine_backward
// (ops/dispatch.h), so b2's gradient is the column sums of bf16(dy) (the
// one expert's weight is 1), where the dense fc2's sums the f32 dy.
TEST(MoeLayer, OneExpertEqualsDenseFfnInBf16) {
  Rng rng(5);
  const int64_t C = 16, H = 24, N = 11;
  ParamStore ps;
  ps.set_bf16_shadows(true);
  MoeLayer moe(host_ctx(), ps, "m", C, moe_config(1, 1), H, rng, 0.3f, 0.3f, 7);
  Mlp mlp(host_ctx(), ps, "d", C, H, rng, 0.3f, 0.3f);
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  const std::vector<std::pair<std::string, std::string>> pairs{
      {"m.experts.w1", "d.fc1.w"}, {"m.experts.b1", "d.fc1.b"}, {"m.experts.w2", "d.fc2.w"}, {"m.experts.b2", "d.fc2.b"}};
  for (const auto& [s, d] : pairs) {
    Param *src = ps.find(s), *dst = ps.find(d);
    ASSERT_EQ(src->value.numel(), dst->value.numel()) << d;
    std::copy_n(src->value.f32(), src->value.numel(), dst->value.f32());
  }
  ps.refresh_shadows(host_ctx());
  Tensor x = testing::randn({N, C}, rng), dy = testing::randn({N, C}, rng);
  Tensor a = moe.forward(x), b = mlp.forward(x);
  double worst = 0;
  for (int64_t i = 0; i < N * C; ++i) worst = std::max(worst, std::fabs(double(a.f32()[i]) - b.f32()[i]));
  EXPECT_LT(worst, 1e-5) << "forward";
  Tensor da = moe.backward(dy), db = mlp.backward(dy);
  auto rel = [](const Tensor& u, const Tensor& v) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < u.numel(); ++i) {
      num += (double(u.f32()[i]) - v.f32()[i]) * (double(u.f32()[i]) - v.f32()[i]);
      den += double(v.f32()[i]) * v.f32()[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
  };
  EXPECT_LT(rel(da, db), 1e-5) << "dx";
  for (const auto& [s, d] : pairs)
    if (d != "d.fc2.b") EXPECT_LT(rel(ps.find(s)->grad, ps.find(d)->grad), 1e-5) << d;
  Tensor db2 = Tensor::zeros({C}, DType::f32, host_ctx());  // sum_i bf16(dy_i)
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c) db2.f32()[c] += bf16_to_f32(f32_to_bf16(dy.f32()[i * C + c]));
  EXPECT_LT(rel(ps.find("m.experts.b2")->grad, db2), 1e-5) << "m.experts.b2: the column sums of bf16(dy)";
  EXPECT_GT(rel(ps.find("d.fc2.b")->grad, db2), 1e-5) << "the dense b2 gradient is not the f32 dy's: nothing tested";
}

// SwiGLU without biases (the Mixtral expert): one expert with room for every
// token is the dense SwiGLU MLP with the same gate|up and down matrices.
TEST(MoeLayer, OneSwigluExpertEqualsDenseSwigluFfn) {
  Rng rng(21);
  const int64_t C = 8, H = 12, N = 9;
  const FfnOptions swiglu{ops::FfnActivation::swiglu, false};
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", C, moe_config(1, 1), H, rng, 0.3f, 0.3f, 7, nullptr, swiglu);
  Mlp mlp(host_ctx(), ps, "d", C, H, rng, 0.3f, 0.3f, swiglu);
  ps.finalize(host_ctx());
  for (const char* absent : {"m.experts.b1", "m.experts.b2", "d.fc1.b", "d.fc2.b"})
    EXPECT_EQ(ps.find(absent), nullptr) << absent;
  EXPECT_EQ(ps.find("m.experts.w1")->shape, (Shape{1, C, 2 * H}));
  for (const char* s : {"w1", "w2"}) {
    Param* src = ps.find(std::string("m.experts.") + s);
    Param* dst = ps.find(std::string("d.fc") + s[1] + ".w");
    ASSERT_EQ(src->value.numel(), dst->value.numel()) << s;
    std::copy_n(src->value.f32(), src->value.numel(), dst->value.f32());
  }
  Tensor x = testing::randn({N, C}, rng);
  Tensor a = moe.forward(x), b = mlp.forward(x);
  for (int64_t i = 0; i < N * C; ++i) EXPECT_NEAR(a.f32()[i], b.f32()[i], 1e-5f);
  // N routed rows through 3 GEMMs of C x H each, plus the router: 6 N C H + 2 N C G.
  EXPECT_DOUBLE_EQ(moe.forward_flops(), 6.0 * N * C * H + 2.0 * N * C * 1);
}

TEST(MoeLayer, TopKEqualsGIsProbabilityWeightedSumOfAllExperts) {
  Rng rng(2);
  const int64_t C = 6, H = 5, N = 7, G = 4;
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", C, moe_config(G, G), H, rng, 0.5f, 0.5f, 7);
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  Tensor x = testing::randn({N, C}, rng);
  Tensor y = moe.forward(x);
  EXPECT_EQ(moe.route().dropped, 0);
  const float* wg = ps.find("m.router.w")->value.f32();
  for (int64_t i = 0; i < N; ++i) {
    std::vector<double> logit(G, 0.0);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < C; ++c) logit[g] += x.f32()[i * C + c] * wg[c * G + g];
    double mx = *std::max_element(logit.begin(), logit.end()), z = 0;
    for (double l : logit) z += std::exp(l - mx);
    std::vector<double> want(C, 0.0);
    for (int64_t g = 0; g < G; ++g) {
      auto e = expert_row(ps, "m", static_cast<int>(g), x.f32() + i * C, C, H);
      for (int64_t c = 0; c < C; ++c) want[c] += std::exp(logit[g] - mx) / z * e[c];
    }
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(y.f32()[i * C + c], want[c], 1e-5) << i << "," << c;
  }
}

TEST(MoeLayer, ExpertSizesAndCosts) {
  switchyard::MoeConfig c = moe_config(4, 1);
  EXPECT_EQ(expert_hidden_sizes(c, 8), (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(expert_costs(c, 8), (std::vector<float>{1, 1, 1, 1}));
  c.add_expert_hidden(4);  // one value: every expert
  EXPECT_EQ(expert_hidden_sizes(c, 8), (std::vector<int64_t>{4, 4, 4, 4}));
  EXPECT_EQ(shared_expert_hidden(c, 8), 4);
  c.clear_expert_hidden();
  for (int h : {2, 8, 32, 0}) c.add_expert_hidden(h);  // 0: the dense FFN's width
  EXPECT_EQ(expert_hidden_sizes(c, 8), (std::vector<int64_t>{2, 8, 32, 8}));
  EXPECT_EQ(shared_expert_hidden(c, 8), 8);
  // FLOPs per token (forward + backward) over the dense FFN's: 12 d H_g / (12 d F).
  EXPECT_EQ(expert_costs(c, 8), (std::vector<float>{0.25f, 1.f, 4.f, 1.f}));
  for (float v : {1.f, 1.f, 3.f, 0.5f}) c.add_expert_cost(v);  // the override
  EXPECT_EQ(expert_costs(c, 8), (std::vector<float>{1.f, 1.f, 3.f, 0.5f}));
}

// Experts of hidden widths 3, 5, 9, 4: with top-k = G the layer is the
// probability-weighted sum of every expert, each its own FFN.
TEST(MoeLayer, HeterogeneousExpertsAreEachTheirOwnFfn) {
  Rng rng(21);
  const int64_t C = 6, N = 7, G = 4;
  const std::vector<int64_t> H = {3, 5, 9, 4};
  auto cfg = moe_config(G, G);
  for (int64_t h : H) cfg.add_expert_hidden(static_cast<int32_t>(h));
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", C, cfg, 8, rng, 0.5f, 0.5f, 7);
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  EXPECT_EQ(ps.find("m.experts.w1")->value.numel(), C * 21);
  EXPECT_EQ(ps.find("m.experts.b1")->value.numel(), 21);
  Tensor x = testing::randn({N, C}, rng);
  Tensor y = moe.forward(x);
  const float* wg = ps.find("m.router.w")->value.f32();
  for (int64_t i = 0; i < N; ++i) {
    std::vector<double> logit(G, 0.0);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t c = 0; c < C; ++c) logit[g] += x.f32()[i * C + c] * wg[c * G + g];
    double mx = *std::max_element(logit.begin(), logit.end()), z = 0;
    for (double l : logit) z += std::exp(l - mx);
    std::vector<double> want(C, 0.0);
    int64_t S = 0;
    for (int64_t g = 0; g < G; ++g) {
      auto e = expert_row(ps, "m", static_cast<int>(g), x.f32() + i * C, C, H[g], S);
      S += H[g];
      for (int64_t c = 0; c < C; ++c) want[c] += std::exp(logit[g] - mx) / z * e[c];
    }
    for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(y.f32()[i * C + c], want[c], 1e-5) << i << "," << c;
  }
  // FLOPs: the router 2 N C G, each expert 4 n_g C H_g with n_g = N.
  EXPECT_DOUBLE_EQ(moe.forward_flops(), 2.0 * N * C * G + 4.0 * N * C * 21);
  EXPECT_DOUBLE_EQ(moe.stats().realized_cost, (3 + 5 + 9 + 4) / 8.0);  // every token pays every expert
}

// Realised cost and the hard budget, by hand: two experts of widths 4 and 16
// (dense FFN 8: costs 0.5 and 2), the router fixed so that tokens with x_0 > 0
// choose expert 0 (4 tokens) and the others expert 1 (2 tokens).
TEST(MoeLayer, RealizedCostAndHardBudgetByHand) {
  const int64_t C = 4, N = 6;
  auto run = [&](switchyard::MoeConfig::BudgetMode mode, float budget) {
    auto cfg = moe_config(2, 1);
    cfg.add_expert_hidden(4), cfg.add_expert_hidden(16);
    cfg.set_budget_mode(mode);
    cfg.set_budget(budget);
    cfg.set_budget_coef(0.25f);  // the realised-cost loss, on the cost before the budget's drops
    ParamStore ps;
    Rng rng(22);
    auto moe = std::make_unique<MoeLayer>(host_ctx(), ps, "m", C, cfg, 8, rng, 0.5f, 0.5f, 7);
    ps.finalize(host_ctx());
    randomize_biases(ps, rng);
    float* wg = ps.find("m.router.w")->value.f32();  // (C, 2)
    std::fill_n(wg, C * 2, 0.f);
    wg[0] = 1.f, wg[1] = -1.f;  // logits (x_0, -x_0)
    Tensor x = testing::zeros({N, C});
    const float x0[N] = {2.f, -0.5f, 3.f, 1.5f, -0.2f, 2.5f};  // e0: t0, t2, t3, t5; e1: t1, t4
    for (int64_t i = 0; i < N; ++i) x.f32()[i * C] = x0[i], x.f32()[i * C + 1] = 0.3f * i;
    Tensor y = moe->forward(x);
    return std::make_pair(std::move(moe), y);
  };
  auto [soft, ys] = run(switchyard::MoeConfig::SOFT, 1.f);
  const RoutingStats& st = soft->stats();
  EXPECT_DOUBLE_EQ(st.realized_cost, (4 * 0.5 + 2 * 2.0) / N);  // 1.0
  EXPECT_DOUBLE_EQ(st.cost_before_budget, 1.0);
  EXPECT_EQ(st.budget_dropped, 0.0);
  EXPECT_DOUBLE_EQ(soft->forward_flops(), 2.0 * N * C * 2 + 4.0 * C * (4 * 4 + 2 * 16));
  // B = 0.5: 3 in all, 6 kept. Scores p = sigmoid(2 |x_0|): the expert-1
  // tokens' are the lowest (t4 0.60, t1 0.73; the others >= 0.95). Dropping
  // t4 leaves 4 > 3, then t1 leaves 2 <= 3: the four cheap tokens stay.
  auto [hard, yh] = run(switchyard::MoeConfig::HARD, 0.5f);
  const RoutingStats& sh = hard->stats();
  EXPECT_DOUBLE_EQ(sh.realized_cost, 2.0 / N);
  EXPECT_DOUBLE_EQ(sh.cost_before_budget, 1.0);
  EXPECT_DOUBLE_EQ(sh.budget_dropped, 2.0 / N);
  EXPECT_EQ(sh.dropped, 0.0);
  EXPECT_DOUBLE_EQ(sh.unserved, 2.0 / N);
  // The budget loss (computed on the routing sums where they live): 0.25 (1.0 - 0.5);
  // under the soft run's B = 1 it is off.
  EXPECT_FLOAT_EQ(static_cast<float>(sh.budget_loss), 0.25f * 0.5f);
  EXPECT_EQ(st.budget_loss, 0.0);
  EXPECT_DOUBLE_EQ(hard->forward_flops(), 2.0 * N * C * 2 + 4.0 * C * (4 * 4));
  for (int64_t i : {1, 4})
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(yh.f32()[i * C + c], 0.f) << "dropped token " << i;
  for (int64_t i : {0, 2, 3, 5})
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(yh.f32()[i * C + c], ys.f32()[i * C + c]) << "kept token " << i;
}

TEST(MoeLayer, ExpertChoiceFillsEveryExpert) {
  Rng rng(3);
  auto cfg = moe_config(4, 1);
  cfg.set_router(switchyard::MoeConfig::EXPERT_CHOICE);
  cfg.set_capacity_factor(1.0f);
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", 8, cfg, 8, rng, 0.3f, 0.3f, 7);
  ps.finalize(host_ctx());
  moe.forward(testing::randn({12, 8}, rng));
  for (int32_t c : moe.route().count.to_vector<int32_t>()) EXPECT_EQ(c, 3);
}

// moe.min_capacity is a floor under every policy's capacity, in training
// and in evaluation: 24 tokens, 4 experts at capacity factor 0.25 would give
// 3 (top-2) or 2 (expert choice) rows; the floor makes it 5.
TEST(MoeLayer, MinCapacityIsAFloorForEveryPolicy) {
  for (bool expert_choice : {true, false}) {
    SCOPED_TRACE(expert_choice ? "expert choice" : "tokens choose");
    Rng rng(3);
    auto cfg = moe_config(4, expert_choice ? 1 : 2);
    if (expert_choice) cfg.set_router(switchyard::MoeConfig::EXPERT_CHOICE);
    cfg.set_capacity_factor(0.25f);
    cfg.set_capacity_factor_eval(0.25f);
    ParamStore ps;
    MoeLayer moe(host_ctx(), ps, "m", 8, cfg, 8, rng, 0.3f, 0.3f, 7);
    ps.finalize(host_ctx());
    const Tensor x = testing::randn({24, 8}, rng);
    moe.forward(x);
    EXPECT_EQ(moe.stats().capacity, expert_choice ? 2 : 3);
    cfg.set_min_capacity(5);
    ParamStore ps2;
    MoeLayer floored(host_ctx(), ps2, "m", 8, cfg, 8, rng, 0.3f, 0.3f, 7);
    ps2.finalize(host_ctx());
    for (bool training : {true, false}) {
      floored.set_training(training);
      floored.forward(x);
      EXPECT_EQ(floored.stats().capacity, 5) << (training ? "training" : "evaluation");
    }
  }
}

// Unserved tokens (no expert at all) are reported apart from dropped
// assignments, for every policy. Expert choice drops nothing, yet the tokens
// no expert picked get no expert output: counted from the route by hand.
TEST(MoeLayer, UnservedTokensAreReportedForEveryPolicy) {
  for (bool expert_choice : {true, false}) {
    SCOPED_TRACE(expert_choice ? "expert choice" : "tokens choose");
    Rng rng(3);
    auto cfg = moe_config(4, expert_choice ? 1 : 2);
    if (expert_choice) cfg.set_router(switchyard::MoeConfig::EXPERT_CHOICE);
    cfg.set_capacity_factor(expert_choice ? 1.0f : 0.5f);
    ParamStore ps;
    MoeLayer moe(host_ctx(), ps, "m", 8, cfg, 8, rng, 0.3f, 0.3f, 7);
    ps.finalize(host_ctx());
    const int64_t N = 24;
    moe.forward(testing::randn({N, 8}, rng));
    const ops::Route& r = moe.route();
    const std::vector<int32_t> group = r.group.to_vector<int32_t>(), slot = r.slot.to_vector<int32_t>();
    int64_t unserved = 0, used = 0, dropped = 0;
    for (int64_t i = 0; i < N; ++i) {
      bool served = false;
      for (int64_t j = 0; j < r.k; ++j) {
        const int64_t a = i * r.k + j;
        if (group[a] < 0) continue;
        ++used;
        if (slot[a] >= 0)
          served = true;
        else
          ++dropped;
      }
      unserved += !served;
    }
    EXPECT_GT(unserved, 0);
    EXPECT_DOUBLE_EQ(moe.stats().unserved, static_cast<double>(unserved) / N);
    EXPECT_DOUBLE_EQ(moe.stats().dropped, static_cast<double>(dropped) / used);
    if (expert_choice) EXPECT_EQ(moe.stats().dropped, 0.0);
  }
}

// Loss = y . R + router losses; every parameter and the input against finite
// differences. The choice of experts is held fixed by a large margin: FD steps
// are small next to the gaps between router scores.
void check_layer_gradients(switchyard::MoeConfig cfg, uint64_t seed, const FfnOptions& ffn = {}) {
  Rng rng(seed);
  const int64_t C = 6, H = 7, N = 10;
  ParamStore ps;
  MoeLayer moe(host_ctx(), ps, "m", C, cfg, H, rng, 0.4f, 0.4f, 7, nullptr, ffn);
  ps.finalize(host_ctx());
  randomize_biases(ps, rng);
  Tensor x = testing::randn({N, C}, rng), R = testing::randn({N, C}, rng);
  auto loss = [&] {
    Tensor y = moe.forward(x);
    return testing::dot(y, R) + moe.aux_loss();
  };
  loss();
  ps.zero_grad(host_ctx());
  Tensor dx = moe.backward(R);
  std::vector<std::pair<std::string, Tensor>> grads;
  for (Param* p : ps.all()) grads.emplace_back(p->name, p->grad.clone());
  for (auto& [name, g] : grads) testing::expect_gradient(name, ps.find(name)->value, g, loss, 1e-3, 3e-2);
  testing::expect_gradient("x", x, dx, loss, 1e-3, 3e-2);
}

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

// ---- on the GPU (skipped without one) ----

using MoeLayerCuda = testing::CudaTest;

// A padded MoE layer's training step queues all its work without waiting for
// the device: nothing comes back in forward or backward (the route's host
// part is known; the router's sums, losses - the realised-cost budget loss
// included - and bias update stay on the device), and the statistics cost
// one wait when asked for. The packed
// route's offsets come back once per forward: there the same count is 1, so
// the check can fail; pad_to_largest adds no wait to that one (its offsets
// go up, queued).
TEST_F(MoeLayerCuda, PaddedStepWaitsForNothing) {
  for (const int layout : {0, 1, 2}) {
    const bool padded = layout == 1;
    SCOPED_TRACE(layout == 0 ? "packed" : padded ? "padded" : "pad_to_largest");
    Rng rng(5);
    auto cfg = moe_config(8, 2);
    cfg.set_capacity_factor(1.25f);
    cfg.set_load_balance_coef(0.01f);
    cfg.set_z_loss_coef(1e-3f);
    cfg.set_bias_balance_rate(1e-3f);
    cfg.set_budget_coef(0.1f);  // the realised-cost budget loss too
    cfg.set_budget(0.5f);
    cfg.set_padded(padded);
    cfg.set_pad_to_largest(layout == 2);
    ParamStore ps;
    MoeLayer moe(gpu(), ps, "m", 16, cfg, 32, rng, 0.1f, 0.1f, 7);
    ps.finalize(gpu());
    const Tensor x = testing::randn({64, 16}, rng).to(gpu()), dy = testing::randn({64, 16}, rng).to(gpu());
    moe.forward(x);  // warm-up: allocator pools, GEMM algorithms
    moe.backward(dy);
    moe.end_step();
    const int64_t before = host_waits();
    moe.set_step(2);
    moe.forward(x);
    moe.backward(dy);
    moe.end_step();  // the balancing bias moves on the device
    EXPECT_EQ(host_waits() - before, padded ? 0 : 1);
    EXPECT_GT(moe.stats().max_over_mean, 0.0);
    EXPECT_EQ(host_waits() - before, padded ? 1 : 2);
    (void)moe.aux_loss();  // read already
    EXPECT_EQ(host_waits() - before, padded ? 1 : 2);
  }
}

}  // namespace
}  // namespace sy
