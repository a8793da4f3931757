// Adaptive depth: a depth-routed block against the unrouted one, gradients,
// pass-through exactness and causality of the inference-time predictor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "grad_check.h"
#include "ops/depth_gate.h"
#include "ops/elementwise.h"
#include "ops/routing.h"
#include "runtime/model.h"
#include "runtime/step_metrics.h"

namespace sy {
namespace {

switchyard::ModelConfig model_cfg() {
  switchyard::ModelConfig m;
  m.set_d_model(8);
  m.set_n_heads(2);
  m.set_n_layers(2);
  m.set_ffn_hidden(12);
  m.set_init_std(0.3f);
  return m;
}

switchyard::DepthConfig depth_cfg(float capacity, bool sigmoid_weight = false) {
  switchyard::DepthConfig d;
  d.set_every_n_layers(1);
  d.set_capacity(capacity);
  if (sigmoid_weight) d.set_weight(switchyard::DepthConfig::SIGMOID);
  return d;
}

// A block (and its params) built from a fixed seed; depth router optional.
struct TestBlock {
  ParamStore ps;
  std::unique_ptr<Block> block;
  TestBlock(const switchyard::DepthConfig* depth, uint64_t seed = 1, switchyard::ModelConfig m = model_cfg()) {
    Rng rng(seed);
    auto ffn = std::make_unique<Mlp>(host_ctx(), ps, "b.mlp", m.d_model(), m.ffn_hidden(), rng, 0.3f, 0.3f,
                                     ffn_options(m));
    block = std::make_unique<Block>(host_ctx(), ps, "b", m, std::move(ffn), rng, depth);
    ps.finalize(host_ctx());
  }
};

TEST(Depth, CapacityOneEqualsUnroutedBlockExactly) {
  auto d = depth_cfg(1.0f);
  TestBlock plain(nullptr), routed(&d);
  Rng rng(2);
  Tensor x = testing::randn({3 * 7, 8}, rng);
  Tensor a = plain.block->forward(x, 3, 7), b = routed.block->forward(x, 3, 7);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.f32()[i], b.f32()[i]) << "element " << i;
  EXPECT_EQ(routed.block->depth()->stats().processed, 1.0);
}

TEST(Depth, RoutedAwayTokensPassBitIdentical) {
  auto d = depth_cfg(0.3f);
  TestBlock t(&d);
  Rng rng(3);
  Tensor x = testing::randn({2 * 10, 8}, rng);
  Tensor y = t.block->forward(x, 2, 10);
  const ops::Route& r = t.block->depth()->route();
  EXPECT_EQ(r.rows(), 2 * 3);  // ceil(0.3 * 10) per sequence
  const std::vector<int32_t> group = r.group.to_vector<int32_t>();
  int64_t untouched = 0;
  for (int64_t i = 0; i < 20; ++i) {
    bool same = true;
    for (int c = 0; c < 8; ++c) same &= y.f32()[i * 8 + c] == x.f32()[i * 8 + c];
    if (group[i] < 0) EXPECT_TRUE(same) << "token " << i << " was routed away but changed";
    else EXPECT_FALSE(same) << "token " << i << " was processed but is unchanged";
    untouched += same;
  }
  EXPECT_EQ(untouched, 14);
}

// loss = y . R + budget loss; all block parameters and the input.
void check_gradients(const switchyard::DepthConfig& d, bool check_router) {
  TestBlock t(&d, 5);
  Rng rng(6);
  Tensor x = testing::randn({2 * 6, 8}, rng), R = testing::randn({2 * 6, 8}, rng);
  auto loss = [&] {
    Tensor y = t.block->forward(x, 2, 6);
    return testing::dot(y, R) + t.block->depth()->aux_loss();
  };
  loss();
  t.ps.zero_grad(host_ctx());
  Tensor dx = t.block->backward(R);
  for (Param* p : t.ps.all()) {
    if (p->name.find("predictor") != std::string::npos) continue;  // its own loss, below
    if (!check_router && p->name.find("router") != std::string::npos) continue;
    // Trunk parameters do not move the router's input, so the choice stays put
    // and a larger step (less round-off) is safe; the router and x use 1e-3.
    const bool moves_choice = p->name.find("router") != std::string::npos;
    Tensor g = p->grad.clone();
    testing::expect_gradient(p->name, p->value, g, loss, moves_choice ? 1e-3 : 1e-2, 3e-2);
  }
  if (check_router) testing::expect_gradient("x", x, dx, loss, 1e-3, 3e-2);
  // The predictor learns by BCE against the top-k choice, and only it.
  auto bce = [&] {
    t.block->forward(x, 2, 6);
    return t.block->depth()->stats().predictor_bce;
  };
  bce();
  t.ps.zero_grad(host_ctx());
  t.block->backward(testing::zeros(R.shape()));  // zero upstream: only the predictor's own loss
  Param* wp = t.ps.find("b.depth.predictor.w");
  Tensor g = wp->grad.clone();
  testing::expect_gradient("predictor.w", wp->value, g, bce, 1e-3, 3e-2);
}

TEST(Depth, GradientsSigmoidWeight) {
  auto d = depth_cfg(0.5f, true);
  d.set_budget_coef(0.5f);
  d.set_budget(0.1f);
  check_gradients(d, true);
}

TEST(Depth, GradientsStraightThroughTrunk) {
  // The straight-through weight is 1 in value: its router gradient is a
  // surrogate that finite differences cannot see, so only the trunk is checked.
  check_gradients(depth_cfg(0.5f), false);
}

TEST(Depth, StraightThroughRouterGradientIsSigmoidSurrogate) {
  // d loss / d r_i = (dy_i . (z_i - x_i)) (1 - sigma(r_i)) for routed tokens: the
  // router weight gradient equals x^T dr computed by hand.
  auto d = depth_cfg(0.5f);
  TestBlock t(&d, 7);
  Rng rng(8);
  Tensor x = testing::randn({6, 8}, rng), R = testing::randn({6, 8}, rng);
  Tensor y = t.block->forward(x, 1, 6);
  t.ps.zero_grad(host_ctx());
  t.block->backward(R);
  const ops::Route& r = t.block->depth()->route();
  const std::vector<int32_t> group = r.group.to_vector<int32_t>();
  Param* w = t.ps.find("b.depth.router.w");
  std::vector<double> want(8, 0.0);
  for (int64_t i = 0; i < 6; ++i) {
    if (group[i] < 0) continue;
    double s = 0, dw = 0;
    for (int c = 0; c < 8; ++c) s += x.f32()[i * 8 + c] * w->value.f32()[c];
    const double sig = 1 / (1 + std::exp(-s));
    for (int c = 0; c < 8; ++c) dw += R.f32()[i * 8 + c] * (y.f32()[i * 8 + c] - x.f32()[i * 8 + c]);
    for (int c = 0; c < 8; ++c) want[c] += dw * (1 - sig) * x.f32()[i * 8 + c];
  }
  for (int c = 0; c < 8; ++c) EXPECT_NEAR(w->grad.f32()[c], want[c], 1e-4 * (1 + std::fabs(want[c])));
}

TEST(Depth, PredictorRoutingIsCausal) {
  auto d = depth_cfg(0.5f);
  d.set_tau(0.5f);
  TestBlock t(&d, 9);
  // Bias the predictor so that some but not all tokens are routed.
  t.ps.find("b.depth.predictor.b")->value.f32()[0] = 0.2f;
  t.block->set_training(false);
  Rng rng(10);
  const int64_t T = 12;
  Tensor x = testing::randn({T, 8}, rng);
  Tensor y0 = t.block->forward(x, 1, T);
  const double processed = t.block->depth()->stats().processed;
  EXPECT_GT(processed, 0.0);
  EXPECT_LT(processed, 1.0);
  for (int64_t j = 1; j < T; ++j) {
    Tensor x2 = x.clone();
    for (int c = 0; c < 8; ++c) x2.f32()[j * 8 + c] += 1.5f;
    Tensor y = t.block->forward(x2, 1, T);
    for (int64_t i = 0; i < j * 8; ++i) ASSERT_EQ(y.f32()[i], y0.f32()[i]) << "token j=" << j << " changed output " << i / 8;
  }
}

switchyard::ModelConfig rope_cfg() {
  auto m = model_cfg();
  m.set_position(switchyard::ModelConfig::ROPE);
  m.set_rope_base(50.f);
  return m;
}

// The layers of a rope_cfg() block with t's weights, run by hand on the rows
// xs as B sequences of T, rotated by positions (undefined: compacted, row n
// at n mod T).
Tensor rope_block_by_hand(const TestBlock& t, const Tensor& xs, int64_t B, int64_t T, const Tensor& positions) {
  ParamStore ps;
  Rng r0(0);
  const auto m = rope_cfg();
  const int64_t C = m.d_model();
  Mlp mlp(host_ctx(), ps, "b.mlp", C, m.ffn_hidden(), r0, 0.3f, 0.3f);
  LayerNorm ln1(host_ctx(), ps, "b.ln1", C, r0), ln2(host_ctx(), ps, "b.ln2", C, r0);
  CausalSelfAttention attn(host_ctx(), ps, "b.attn", C, m.n_heads(), r0, 0.3f, 0.3f, attention_options(m));
  ps.finalize(host_ctx());
  for (Param* p : ps.all()) p->value.copy_from(t.ps.find(p->name)->value, host_ctx());
  Tensor h = attn.forward(ln1.forward(xs), B, T, positions);
  ops::add_into(host_ctx(), h, xs);
  Tensor z = mlp.forward(ln2.forward(h));
  ops::add_into(host_ctx(), z, h);
  return z;
}

// x's rows `rows` (N, C).
Tensor gather(const Tensor& x, const std::vector<int64_t>& rows) {
  const int64_t C = x.dim(1);
  Tensor xs = testing::zeros({static_cast<int64_t>(rows.size()), C});
  for (size_t j = 0; j < rows.size(); ++j) std::copy_n(x.f32() + rows[j] * C, C, xs.f32() + j * C);
  return xs;
}

// With RoPE, a depth-routed block rotates its routed tokens by their positions
// in the full sequence, not by their index among the routed tokens: the
// routed rows' output (z exactly, under the straight-through weight) equals
// the block's layers run by hand on the routed rows at their original
// positions, and differs from them run at compacted positions.
TEST(Depth, RopeKeepsRoutedTokensOriginalPositions) {
  auto d = depth_cfg(0.5f);
  TestBlock t(&d, 13, rope_cfg());
  const int64_t B = 2, T = 10, C = 8;
  Rng rng(14);
  Tensor x = testing::randn({B * T, C}, rng);
  Tensor y = t.block->forward(x, B, T);
  const std::vector<int32_t> group = t.block->depth()->route().group.to_vector<int32_t>();
  std::vector<int64_t> rows;
  std::vector<int32_t> pos;
  for (int64_t i = 0; i < B * T; ++i)
    if (group[i] >= 0) rows.push_back(i), pos.push_back(static_cast<int32_t>(i % T));
  ASSERT_EQ(rows.size(), 10u);
  const Tensor xs = gather(x, rows);
  const Tensor want = rope_block_by_hand(t, xs, B, 5, Tensor::from_host(pos));
  const Tensor compacted = rope_block_by_hand(t, xs, B, 5, Tensor());
  double off_compacted = 0;
  for (int64_t j = 0; j < 10; ++j)
    for (int64_t c = 0; c < C; ++c) {
      EXPECT_NEAR(y.f32()[rows[j] * C + c], want.f32()[j * C + c], 1e-5) << "row " << rows[j];
      const float got = y.f32()[rows[j] * C + c];
      off_compacted = std::max(off_compacted, static_cast<double>(std::fabs(got - compacted.f32()[j * C + c])));
    }
  EXPECT_GT(off_compacted, 1e-3) << "the test cannot tell original from compacted positions";
}

// The same under the causal predictor at evaluation, where the sequences
// route different counts and the block runs one sequence at a time: each
// sequence's routed rows are rotated by their own original positions.
TEST(Depth, PredictorRoutingWithRopeKeepsOriginalPositions) {
  auto d = depth_cfg(0.5f);
  d.set_tau(0.5f);
  TestBlock t(&d, 17, rope_cfg());
  t.ps.find("b.depth.predictor.b")->value.f32()[0] = 0.2f;  // some but not all tokens routed
  t.block->set_training(false);
  const int64_t B = 3, T = 8, C = 8;
  Rng rng(18);
  Tensor x = testing::randn({B * T, C}, rng);
  Tensor y = t.block->forward(x, B, T);
  const std::vector<int32_t> group = t.block->depth()->route().group.to_vector<int32_t>();
  std::vector<int64_t> counts;
  double off_compacted = 0;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> rows;
    std::vector<int32_t> pos;
    for (int64_t i = b * T; i < (b + 1) * T; ++i)
      if (group[i] >= 0) rows.push_back(i), pos.push_back(static_cast<int32_t>(i % T));
    counts.push_back(static_cast<int64_t>(rows.size()));
    if (rows.empty()) continue;
    const int64_t n = counts.back();
    const Tensor xs = gather(x, rows);
    const Tensor want = rope_block_by_hand(t, xs, 1, n, Tensor::from_host(pos));
    const Tensor compacted = rope_block_by_hand(t, xs, 1, n, Tensor());
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < C; ++c) {
        EXPECT_NEAR(y.f32()[rows[j] * C + c], want.f32()[j * C + c], 1e-5) << "sequence " << b << " row " << rows[j];
        const float got = y.f32()[rows[j] * C + c];
      off_compacted = std::max(off_compacted, static_cast<double>(std::fabs(got - compacted.f32()[j * C + c])));
      }
  }
  ASSERT_NE(*std::min_element(counts.begin(), counts.end()), *std::max_element(counts.begin(), counts.end()))
      << "the test wants sequences with different routed counts";
  EXPECT_GT(off_compacted, 1e-3) << "the test cannot tell original from compacted positions";
}

TEST(Depth, GradientsWithRope) {
  auto d = depth_cfg(0.5f, true);
  TestBlock t(&d, 15, rope_cfg());
  Rng rng(16);
  Tensor x = testing::randn({2 * 6, 8}, rng), R = testing::randn({2 * 6, 8}, rng);
  auto loss = [&] { return testing::dot(t.block->forward(x, 2, 6), R); };
  loss();
  t.ps.zero_grad(host_ctx());
  t.block->backward(R);
  for (const char* name : {"b.attn.qkv.w", "b.attn.proj.w", "b.ln1.w"}) {
    Param* p = t.ps.find(name);
    Tensor g = p->grad.clone();
    testing::expect_gradient(name, p->value, g, loss, 1e-2, 3e-2);
  }
}

TEST(Depth, TopKRoutingLooksAtTheFuture) {
  // Why inference uses the predictor: with top-k over the sequence, a later
  // token can push an earlier one out of the block.
  auto d = depth_cfg(0.5f);
  TestBlock t(&d, 11);
  Rng rng(12);
  const int64_t T = 8;
  Tensor x = testing::randn({T, 8}, rng);
  // The last token moved far against, then along, the router weight: from the
  // router's least to its most favoured token.
  const float* w = t.ps.find("b.depth.router.w")->value.f32();
  Tensor x1 = x.clone(), x2 = x.clone();
  for (int c = 0; c < 8; ++c) {
    x1.f32()[(T - 1) * 8 + c] -= 100.f * w[c];
    x2.f32()[(T - 1) * 8 + c] += 100.f * w[c];
  }
  t.block->forward(x1, 1, T);
  std::vector<int32_t> g0 = t.block->depth()->route().group.to_vector<int32_t>();
  EXPECT_LT(g0[T - 1], 0);
  t.block->forward(x2, 1, T);
  std::vector<int32_t> g1 = t.block->depth()->route().group.to_vector<int32_t>();
  int changed_earlier = 0;
  for (int64_t i = 0; i + 1 < T; ++i) changed_earlier += g0[i] != g1[i];
  EXPECT_GT(changed_earlier, 0) << "expected an earlier token's membership to change";
}

TEST(Depth, MoeBlockSeesOnlyRoutedTokens) {
  Config cfg = parse_config(R"(
    model { d_model: 16 n_layers: 2 n_heads: 2 ffn_hidden: 16 seq_len: 8 }
    moe { num_experts: 4 every_n_layers: 1 capacity_factor: 4 }
    depth { every_n_layers: 2 capacity: 0.25 }
  )", "test");
  validate_config(cfg, "test");
  Transformer model(host_ctx(), cfg);
  Batch b;
  for (int i = 0; i < 16; ++i) b.inputs.push_back(i * 7 % 256), b.targets.push_back(i);
  model.forward(b);
  ASSERT_EQ(model.moe_layers().size(), 2u);
  EXPECT_EQ(model.moe_layers()[0].second->route().num_items, 16);  // layer 0: every token
  EXPECT_EQ(model.moe_layers()[1].second->route().num_items, 4);   // layer 1: 2 of 8 per sequence
  EXPECT_LT(model.forward_flops(), model.dense_forward_flops());
  model.backward();  // runs through both
}

// A MoE layer in a depth-routed block (the second), top-k at evaluation.
Config depth_moe_config(float capacity_factor_eval) {
  Config cfg = parse_config(R"(
    model { d_model: 16 n_layers: 2 n_heads: 2 ffn_hidden: 16 seq_len: 8 }
    moe { num_experts: 4 every_n_layers: 2 capacity_factor: 4 }
    depth { every_n_layers: 2 capacity: 0.5 predictor_at_eval: false }
  )", "test");
  cfg.mutable_moe()->set_capacity_factor_eval(capacity_factor_eval);
  validate_config(cfg, "test");
  return cfg;
}

// At evaluation a depth-routed MoE block runs one sequence a call: a
// sequence's experts, and so its output, do not depend on the sequences
// beside it in the batch. Top-k at evaluation routes the same count in every
// sequence, which ran the whole batch as one call with one capacity
// (capacity_factor_eval 0.5 binds here), so a neighbour's tokens took slots.
TEST(Depth, MoeBlockEvaluatesEachSequenceAlone) {
  Transformer model(host_ctx(), depth_moe_config(0.5f));
  model.set_training(false);
  // (The second sequence's: slots go by position, so the first one's
  // tokens came first.)
  auto second_logits = [&](int other) {
    Batch b;
    for (int i = 0; i < 8; ++i) b.inputs.push_back((i * other + 3) % 256), b.targets.push_back(i);
    for (int i = 0; i < 8; ++i) b.inputs.push_back(i * 7 % 256), b.targets.push_back(i);
    model.forward(b);
    const std::vector<float> l = model.logits().to(host_ctx()).to_vector<float>();
    return std::vector<float>(l.begin() + l.size() / 2, l.end());
  };
  const std::vector<float> a = second_logits(5);
  for (int other : {11, 29, 53}) EXPECT_EQ(second_logits(other), a) << "beside " << other;
}

// The MoE statistics of that block after an evaluation forward are over every
// sequence's calls (the routing sums pooled), as one call's would be: here
// each sequence evaluated alone gives one call's, and top-k routes as many
// tokens in each, so the batch's load and dropped share are their means.
// (They were the last call's: the second sequence's.)
TEST(Depth, MoeBlockStatisticsPoolEverySequence) {
  Transformer model(host_ctx(), depth_moe_config(0.75f));
  model.set_training(false);
  auto sequence = [](int s) {
    Batch b;
    for (int i = 0; i < 8; ++i) b.inputs.push_back((i * s + 3) % 256), b.targets.push_back(i);
    return b;
  };
  const MoeLayer& moe = *model.moe_layers().at(0).second;
  std::vector<RoutingStats> alone;
  for (int s : {5, 29}) {
    model.forward(sequence(s));
    alone.push_back(moe.stats());
  }
  Batch both = sequence(5);
  const Batch second = sequence(29);
  both.inputs.insert(both.inputs.end(), second.inputs.begin(), second.inputs.end());
  both.targets.insert(both.targets.end(), second.targets.begin(), second.targets.end());
  model.forward(both);
  const RoutingStats& pooled = moe.stats();
  ASSERT_NE(alone[0].load, alone[1].load);  // (the check can fail)
  for (size_t g = 0; g < pooled.load.size(); ++g)
    EXPECT_NEAR(pooled.load[g], (alone[0].load[g] + alone[1].load[g]) / 2, 1e-12) << "expert " << g;
  EXPECT_NEAR(pooled.dropped, (alone[0].dropped + alone[1].dropped) / 2, 1e-12);
  EXPECT_NEAR(pooled.entropy, (alone[0].entropy + alone[1].entropy) / 2, 1e-9);
  // The next forward's statistics are its own again (the pool starts afresh).
  model.forward(sequence(5));
  EXPECT_EQ(moe.stats().load, alone[0].load);
  EXPECT_EQ(moe.stats().dropped, alone[0].dropped);
}

// A call that every rank padded (no rank's sequence kept a token) holds no
// tokens: a loss taken once on the summed sums (the batch-wide balance) is
// the mean over the calls that routed some, with no 0 averaged in. (One
// process here: set_padding is what every rank does in such a call.)
TEST(Depth, CallsEveryRankPaddedAddNoLossValue) {
  Config cfg = depth_moe_config(2.f);
  cfg.mutable_moe()->set_load_balance_coef(0.01f);
  cfg.mutable_moe()->set_z_loss_coef(0.001f);
  validate_config(cfg, "test");
  Transformer model(host_ctx(), cfg);
  model.set_training(false);
  MoeLayer& moe = *model.moe_layers().at(0).second;
  std::vector<float> v(4 * 16);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.7f * static_cast<float>(i));
  const Tensor x = Tensor::from_host(v).reshape({4, 16});
  moe.forward(x);
  const RoutingStats alone = moe.stats();
  ASSERT_GT(alone.lb_loss, 0.0);
  ASSERT_GT(alone.z_loss, 0.0);
  moe.pool_statistics(true);
  moe.forward(x);
  moe.set_padding(true);
  moe.forward(Tensor::zeros({1, 16}, DType::f32, host_ctx()));
  moe.set_padding(false);
  moe.pool_statistics(false);
  EXPECT_NEAR(moe.stats().lb_loss, alone.lb_loss, 1e-12 * alone.lb_loss);
  EXPECT_NEAR(moe.stats().z_loss, alone.z_loss, 1e-12 * alone.z_loss);
  EXPECT_EQ(moe.stats().load, alone.load);
}

// A kept token whose router score is so negative that sigmoid is 0 in fp32
// still gets weight 1 under the straight-through gate (s / s was 0 / 0 = NaN:
// a real run of shakespeare_small with MoE and depth stopped on it).
TEST(Depth, StraightThroughWeightIsOneWhenSigmoidUnderflows) {
  Ctx& ctx = host_ctx();
  Tensor r = Tensor::from_host<float>({-200.f, -1.f, 3.f, -150.f});
  Tensor s = Tensor::empty({4}, DType::f32, ctx);
  ops::sigmoid(ctx, s, r);
  ASSERT_EQ(s.f32()[0], 0.f);
  ops::Route route;
  ops::threshold_route(ctx, route, Tensor::from_host<float>({0.9f, 0.9f, 0.1f, 0.9f}), 0.5f);
  Tensor w = Tensor::empty({4}, DType::f32, ctx);
  ops::depth_gate_forward(ctx, w, s, route, true);
  EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{1.f, 1.f, 0.f, 1.f}));
  ops::depth_gate_forward(ctx, w, s, route, false);
  EXPECT_EQ(w.f32()[0], 0.f);
  EXPECT_EQ(w.f32()[1], s.f32()[1]);
}

// The predictor's loss by hand: p = (0.9, 0.2, 0.6, 0.4), items 0 and 3
// kept, tau 0.5: BCE = -(log 0.9 + log 0.8 + log 0.4 + log 0.4) / 4;
// (p > tau) agrees with the choice on items 0 and 1: accuracy 1/2;
// dl = (p - y) / 4. The statistics land in the slice of a larger tensor they
// are given, and nowhere else.
TEST(Depth, PredictorLossHandComputedInItsSlice) {
  Ctx& ctx = host_ctx();
  ops::Route route;
  ops::threshold_route(ctx, route, Tensor::from_host<float>({1.f, 0.f, 0.f, 1.f}), 0.5f);
  const Tensor p = Tensor::from_host<float>({0.9f, 0.2f, 0.6f, 0.4f});
  Tensor buf = Tensor::from_host(std::vector<double>{-7, -7, -7, -7, -7});
  Tensor stats = buf.rows(2, 4);
  Tensor dl = Tensor::empty({4}, DType::f32, ctx);
  ops::predictor_loss(ctx, dl, stats, p, route, 0.5f);
  const std::vector<double> v = buf.to_vector<double>();
  auto d = [](float v) { return static_cast<double>(v); };  // the op's p: f32 values, logs in double
  const double bce = -(std::log(d(0.9f)) + std::log(1 - d(0.2f)) + std::log(1 - d(0.6f)) + std::log(d(0.4f))) / 4;
  EXPECT_NEAR(v[2], bce, 1e-12);
  EXPECT_EQ(v[3], 0.5);
  EXPECT_EQ(v[0], -7);
  EXPECT_EQ(v[1], -7);
  EXPECT_EQ(v[4], -7);
  const std::vector<float> want{(0.9f - 1) / 4, 0.2f / 4, 0.6f / 4, (0.4f - 1) / 4};
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(dl.f32()[i], want[i]) << "item " << i;
}

// A depth router with given weights: router scores r = x . w, predictor
// p = sigmoid(x . wp + bp).
struct TestRouter {
  ParamStore ps;
  std::unique_ptr<DepthRouter> router;
  TestRouter(const std::string& name, const switchyard::DepthConfig& d, std::vector<float> w, std::vector<float> wp,
             float bp) {
    Rng rng(1);
    router = std::make_unique<DepthRouter>(host_ctx(), ps, name, 2, d, rng, 0.3f);
    ps.finalize(host_ctx());
    std::copy(w.begin(), w.end(), ps.find(name + ".router.w")->value.f32());
    std::copy(wp.begin(), wp.end(), ps.find(name + ".predictor.w")->value.f32());
    ps.find(name + ".predictor.b")->value.f32()[0] = bp;
  }
};

// What a depth router's statistics should be after a training select() of x
// (B sequences of T, C = 2), computed by hand in double.
DepthStats stats_by_hand(const Tensor& x, int64_t B, int64_t T, const std::vector<float>& w,
                         const std::vector<float>& wp, float bp, const switchyard::DepthConfig& d) {
  const int64_t N = B * T, keep = static_cast<int64_t>(std::ceil(d.capacity() * T));
  auto sigmoid = [](double v) { return 1 / (1 + std::exp(-v)); };
  std::vector<double> r(N), p(N);
  double mean_s = 0;
  for (int64_t i = 0; i < N; ++i) {
    r[i] = x.f32()[2 * i] * w[0] + x.f32()[2 * i + 1] * w[1];
    p[i] = sigmoid(x.f32()[2 * i] * wp[0] + x.f32()[2 * i + 1] * wp[1] + bp);
    mean_s += sigmoid(r[i]) / N;
  }
  DepthStats st;
  st.processed = static_cast<double>(B * keep) / N;
  for (int64_t i = 0; i < N; ++i) {
    int64_t above = 0;  // tokens of i's sequence with a higher score (no ties here)
    for (int64_t j = i / T * T; j < (i / T + 1) * T; ++j) above += r[j] > r[i];
    const bool chosen = above < keep;
    st.predictor_bce -= (chosen ? std::log(p[i]) : std::log(1 - p[i])) / N;
    st.predictor_accuracy += ((p[i] > d.tau()) == chosen) / static_cast<double>(N);
  }
  st.budget_loss = d.budget_coef() * std::max(0.0, mean_s - d.budget());
  return st;
}

void expect_stats(const DepthStats& got, const DepthStats& want, const char* who) {
  EXPECT_EQ(got.processed, want.processed) << who;
  EXPECT_NEAR(got.predictor_bce, want.predictor_bce, 1e-6) << who;
  EXPECT_NEAR(got.predictor_accuracy, want.predictor_accuracy, 1e-12) << who;
  EXPECT_NEAR(got.budget_loss, want.budget_loss, 1e-6) << who;
}

// Two routers sharing one statistics buffer (rows given in the reverse order
// of their creation) each report their own statistics, equal to those
// computed by hand, and reading both takes one device-to-host copy; a new
// select() makes the copy stale, an evaluation one reports no predictor
// statistics, and at budget_coef 0 an evaluation needs no read at all.
TEST(Depth, RoutersShareOneStatisticsBufferReadOnce) {
  auto d = depth_cfg(0.5f);
  d.set_budget_coef(0.5f);
  d.set_budget(0.3f);
  d.set_tau(0.5f);
  const std::vector<float> wa{1.f, 0.f}, pa{0.f, 1.f}, wb{0.5f, -1.f}, pb{-1.f, 0.5f};
  TestRouter a("a", d, wa, pa, 0.f), b("b", d, wb, pb, 0.3f);
  auto shared = std::make_shared<DepthStatsBuffer>(host_ctx(), 2);
  a.router->share_stats(shared, 1);
  b.router->share_stats(shared, 0);
  Rng rng(21);
  const int64_t B = 2, T = 6;
  const Tensor xa = testing::randn({B * T, 2}, rng), xb = testing::randn({B * T, 2}, rng);
  a.router->select(xa, B, T, true);
  b.router->select(xb, B, T, true);
  const DepthStats want_a = stats_by_hand(xa, B, T, wa, pa, 0.f, d), want_b = stats_by_hand(xb, B, T, wb, pb, 0.3f, d);
  ASSERT_GT(want_a.budget_loss, 0.0) << "the test wants the budget loss active";
  ASSERT_GT(std::fabs(want_a.predictor_bce - want_b.predictor_bce), 1e-3) << "the test wants distinct statistics";
  expect_stats(a.router->stats(), want_a, "router a");
  expect_stats(b.router->stats(), want_b, "router b");
  EXPECT_NEAR(a.router->aux_loss(), want_a.budget_loss, 1e-6);
  EXPECT_EQ(shared->reads(), 1);
  // A new forward of one router: the next report reads (once) again.
  a.router->select(xb, B, T, true);
  expect_stats(a.router->stats(), stats_by_hand(xb, B, T, wa, pa, 0.f, d), "router a, again");
  expect_stats(b.router->stats(), want_b, "router b, unchanged");
  EXPECT_EQ(shared->reads(), 2);
  // Evaluation (top-C, no predictor): the budget loss only.
  d.set_predictor_at_eval(false);
  TestRouter e("e", d, wa, pa, 0.f);
  e.router->select(xa, B, T, false);
  DepthStats want_e = want_a;
  want_e.predictor_bce = want_e.predictor_accuracy = 0;
  expect_stats(e.router->stats(), want_e, "evaluation");
  // budget_coef 0: nothing on the device to report in evaluation, no read.
  d.set_budget_coef(0.f);
  TestRouter z("z", d, wa, pa, 0.f);
  z.router->select(xa, B, T, false);
  EXPECT_EQ(z.router->stats().budget_loss, 0.0);
  EXPECT_EQ(z.router->aux_loss(), 0.0);
  EXPECT_EQ(z.router->stats_buffer()->reads(), 0);
}

// A model's depth-routed blocks share one buffer: a logged step's routing
// snapshot reads every block's statistics in one copy, and a step nobody
// logs reads none.
TEST(Depth, ModelReadsDepthStatisticsOncePerLoggedStep) {
  Config cfg = parse_config(R"(
    model { d_model: 16 n_layers: 3 n_heads: 2 ffn_hidden: 16 seq_len: 8 }
    moe { num_experts: 2 every_n_layers: 3 capacity_factor: 2 }
    depth { every_n_layers: 1 capacity: 0.5 budget_coef: 0.1 budget: 0.2 }
  )", "test");
  validate_config(cfg, "test");
  Transformer model(host_ctx(), cfg);
  Batch batch;
  for (int i = 0; i < 16; ++i) batch.inputs.push_back(i * 7 % 256), batch.targets.push_back(i);
  const auto& buffer = model.blocks()[0].depth()->stats_buffer();
  ASSERT_EQ(buffer->routers(), 3);
  for (auto& blk : model.blocks()) EXPECT_EQ(blk.depth()->stats_buffer(), buffer);
  model.forward(batch);
  model.backward();
  EXPECT_EQ(buffer->reads(), 0);
  const RoutingSnapshot snap = routing_snapshot(model, 16);  // the depth stats and aux_loss (MoE present)
  EXPECT_EQ(buffer->reads(), 1);
  for (int l = 0; l < 3; ++l) EXPECT_GT(snap.metrics["layers"][l]["budget_loss"].get<double>(), 0.0) << "layer " << l;
  model.forward(batch);
  model.backward();
  EXPECT_EQ(buffer->reads(), 1);
}

}  // namespace
}  // namespace sy
