// The routing core: Route invariants on random inputs, hand-computed cases
// with ties and overflow, and dispatch/combine on tagged payloads.
#include <gtest/gtest.h>

#include <set>

#include "grad_check.h"
#include "ops/dispatch.h"
#include "ops/routing.h"

namespace sy::ops {
namespace {

using testing::zeros;

Tensor random_probs(int64_t N, int64_t G, Rng& rng, ScoreFn fn = ScoreFn::softmax) {
  Tensor logits = zeros({N, G}), probs = zeros({N, G});
  for (int64_t i = 0; i < N * G; ++i) logits.f32()[i] = static_cast<float>(rng.normal() * 2);
  router_scores(host_ctx(), probs, logits, fn);
  return probs;
}

// Host probabilities (N, G) from values.
Tensor probs_of(const std::vector<float>& p, int64_t N, int64_t G) { return Tensor::from_host(p, {N, G}); }

Route tokens_choose(const Tensor& probs, const TokensChooseParams& p) {
  Route r;
  ops::tokens_choose(host_ctx(), r, probs, p);
  return r;
}

Route groups_choose(const Tensor& scores, int64_t capacity) {
  Route r;
  ops::groups_choose(host_ctx(), r, scores, capacity);
  return r;
}

Route threshold_route(const std::vector<float>& scores, float tau) {
  Route r;
  ops::threshold_route(host_ctx(), r, Tensor::from_host(scores), tau);
  return r;
}

std::vector<int32_t> ints(const Tensor& t) { return t.to_vector<int32_t>(); }
std::vector<float> floats(const Tensor& t) { return t.to_vector<float>(); }

// Every kept assignment has a slot below C; no (group, slot) is used twice;
// counts and offsets agree; dropped = assigned - kept.
void expect_invariants(const Route& r) {
  ASSERT_EQ(r.group.numel(), r.num_items * r.k);
  const std::vector<int32_t> group = ints(r.group), slot = ints(r.slot), rcount = ints(r.count),
                             offset = ints(r.offset);
  std::set<std::pair<int, int>> used;
  std::vector<int32_t> count(r.num_groups, 0);
  int64_t assigned = 0, kept = 0;
  for (size_t a = 0; a < group.size(); ++a) {
    if (group[a] < 0) {
      EXPECT_EQ(slot[a], -1);
      continue;
    }
    ++assigned;
    ASSERT_LT(group[a], r.num_groups);
    if (slot[a] < 0) continue;
    ++kept;
    EXPECT_LT(slot[a], r.capacity);
    EXPECT_TRUE(used.insert({group[a], slot[a]}).second) << "slot used twice";
    ++count[group[a]];
  }
  EXPECT_EQ(count, rcount);
  EXPECT_EQ(offset.front(), 0);
  for (int64_t g = 0; g < r.num_groups; ++g) EXPECT_EQ(offset[g + 1] - offset[g], rcount[g]);
  EXPECT_EQ(r.host_offset, offset);  // the host copy agrees with the tensor
  EXPECT_EQ(r.rows(), kept);
  EXPECT_EQ(r.assigned, assigned);
  EXPECT_EQ(r.dropped, assigned - kept);
  // Slots of a group are 0..count-1.
  for (int64_t g = 0; g < r.num_groups; ++g)
    for (int32_t s = 0; s < rcount[g]; ++s) EXPECT_TRUE(used.count({int(g), s}));
}

TEST(TokensChoose, InvariantsOnRandomInputs) {
  Rng rng(1);
  for (int64_t N : {1, 3, 7, 37, 256})
    for (int64_t G : {1, 2, 5, 8})
      for (int k : {1, 2, 8}) {
        if (k > G) continue;
        for (float cf : {0.5f, 1.0f, 1.25f, 4.0f})
          for (bool dropless : {false, true})
            for (auto pr : {SlotPriority::position, SlotPriority::score}) {
              TokensChooseParams p;
              p.k = k, p.capacity_factor = cf, p.dropless = dropless, p.priority = pr;
              Route r = tokens_choose(random_probs(N, G, rng), p);
              SCOPED_TRACE(::testing::Message() << "N=" << N << " G=" << G << " k=" << k << " cf=" << cf);
              expect_invariants(r);
              if (dropless) EXPECT_EQ(r.dropped, 0);
              else EXPECT_EQ(r.capacity, ceil_capacity(cf, double(N) * k / G));
              // k distinct groups per item
              const std::vector<int32_t> group = ints(r.group);
              for (int64_t i = 0; i < N; ++i) {
                std::set<int> gs(group.begin() + i * k, group.begin() + (i + 1) * k);
                EXPECT_EQ(gs.size(), size_t(k));
              }
            }
      }
}

TEST(Capacity, FloatFractionsDoNotGainARow) {
  EXPECT_EQ(ceil_capacity(0.3f, 10), 3);     // 0.3f = 0.30000001
  EXPECT_EQ(ceil_capacity(1.1f, 100), 110);  // 1.1f = 1.10000002
  EXPECT_EQ(ceil_capacity(0.31f, 10), 4);
  EXPECT_EQ(ceil_capacity(1.25f, 37.0 * 2 / 8), 12);  // 11.5625 -> 12
}

TEST(TokensChoose, HandComputedTiesAndOverflow) {
  // 4 tokens, 2 experts, top-1, C = ceil(1.0 * 4 * 1 / 2) = 2.
  // Token 1 ties (0.5, 0.5): the lower index (expert 0) wins.
  const Tensor p = probs_of({0.9f, 0.1f,   // t0 -> e0
                             0.5f, 0.5f,   // t1 -> e0 (tie)
                             0.6f, 0.4f,   // t2 -> e0: overflow, dropped (position order)
                             0.2f, 0.8f},  // t3 -> e1
                            4, 2);
  TokensChooseParams prm;
  prm.capacity_factor = 1.0f;
  Route r = tokens_choose(p, prm);
  EXPECT_EQ(r.capacity, 2);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{0, 0, 0, 1}));
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, 1, -1, 0}));
  EXPECT_EQ(ints(r.count), (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(ints(r.offset), (std::vector<int32_t>{0, 2, 3}));
  EXPECT_EQ(r.dropped, 1);
  EXPECT_FLOAT_EQ(floats(r.weight)[2], 0.6f);
  // By score (V-MoE batch priority): t0 (0.9) and t2 (0.6) win expert 0; t1 (0.5) drops.
  prm.priority = SlotPriority::score;
  r = tokens_choose(p, prm);
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, -1, 1, 0}));
  // Dropless: capacity grows to 3, nothing dropped.
  prm.dropless = true;
  r = tokens_choose(p, prm);
  EXPECT_EQ(r.capacity, 3);
  EXPECT_EQ(r.dropped, 0);
}

TEST(TokensChoose, SecondChoicesQueueBehindFirstChoices) {
  // top-2 over 3 experts, C = ceil(0.75 * 2 * 2 / 3) = 1: t1's first choice
  // (e1) beats t0's second choice (e1) although t0 comes first.
  const Tensor p = probs_of({0.6f, 0.3f, 0.1f,   // t0: e0, e1
                             0.2f, 0.5f, 0.3f},  // t1: e1, e2
                            2, 3);
  TokensChooseParams prm;
  prm.k = 2, prm.capacity_factor = 0.75f;
  Route r = tokens_choose(p, prm);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{0, 1, 1, 2}));
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, -1, 0, 0}));
  prm.renormalize = true;
  r = tokens_choose(p, prm);
  EXPECT_NEAR(floats(r.weight)[0], 0.6f / 0.9f, 1e-6);
  EXPECT_NEAR(floats(r.weight)[3], 0.3f / 0.8f, 1e-6);
}

TEST(TokensChoose, SelectionBiasMovesChoiceNotWeight) {
  const Tensor p = probs_of({0.7f, 0.3f}, 1, 2);
  const Tensor bias = Tensor::from_host(std::vector<float>{0.f, 0.5f});
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  prm.selection_bias = &bias;
  Route r = tokens_choose(p, prm);
  EXPECT_EQ(ints(r.group)[0], 1);
  EXPECT_FLOAT_EQ(floats(r.weight)[0], 0.3f);
}

TEST(TokensChoose, SelectionKeysMoveChoiceNotWeight) {
  // Keys replace p for the choice (item 0 takes group 1, item 1 group 0, the
  // lower index on a tie), the weights stay p.
  const Tensor p = probs_of({0.7f, 0.3f, 0.4f, 0.6f}, 2, 2);
  const Tensor keys = probs_of({0.f, 1.f, 2.f, 2.f}, 2, 2);
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  prm.selection_keys = &keys;
  Route r = tokens_choose(p, prm);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(floats(r.weight), (std::vector<float>{0.3f, 0.4f}));
  const Tensor short_keys = zeros({3});
  prm.selection_keys = &short_keys;
  EXPECT_THROW(tokens_choose(p, prm), Error);
}

TEST(BalanceBias, MovesTowardBalanceBySign) {
  Tensor bias = zeros({3});
  update_balance_bias(host_ctx(), bias, {6, 3, 0}, 0.1f);  // mean 3
  EXPECT_EQ(floats(bias), (std::vector<float>{-0.1f, 0.f, 0.1f}));
}

TEST(GroupsChoose, ExpertChoiceFillsEveryGroupExactly) {
  Rng rng(2);
  for (int64_t N : {3, 16, 37})
    for (int64_t G : {1, 4, 7}) {
      const int64_t C = (N + G - 1) / G;
      Route r = groups_choose(random_probs(N, G, rng), C);
      expect_invariants(r);
      const std::vector<int32_t> count = ints(r.count);
      for (int64_t g = 0; g < G; ++g) EXPECT_EQ(count[g], C);
      EXPECT_EQ(r.dropped, 0);
    }
}

TEST(GroupsChoose, HandComputedTopCWithTiesSlotsByPosition) {
  // One group, C = 2: scores (0.2, 0.9, 0.5, 0.9): items 1 and 3 (tie: both
  // 0.9, the lower index first). Slots by position: item 1 slot 0, item 3 slot 1.
  const Tensor s = probs_of({0.2f, 0.9f, 0.5f, 0.9f}, 4, 1);
  Route r = groups_choose(s, 2);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{-1, 0, -1, 0}));
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{-1, 0, -1, 1}));
  // C = 1 with the tie: the lower index (1) wins.
  r = groups_choose(s, 1);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{-1, 0, -1, -1}));
}

TEST(Threshold, RoutesAboveTau) {
  Route r = threshold_route({0.2f, 0.7f, 0.5f, 0.51f}, 0.5f);
  expect_invariants(r);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{-1, 0, -1, 0}));
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{-1, 0, -1, 1}));
}

// Payload row i, column c holds 1000*i + c: every moved row says where it came from.
Tensor tagged(int64_t N, int64_t D) {
  Tensor x = zeros({N, D});
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < D; ++c) x.f32()[i * D + c] = static_cast<float>(1000 * i + c);
  return x;
}

TEST(Dispatch, MovesTaggedRowsExactly) {
  Ctx& ctx = host_ctx();
  Rng rng(3);
  const int64_t N = 37, G = 5, D = 3;
  TokensChooseParams prm;
  prm.k = 2, prm.capacity_factor = 0.8f;
  Route r = tokens_choose(random_probs(N, G, rng), prm);
  ASSERT_GT(r.dropped, 0);
  Tensor x = tagged(N, D), buf = zeros({r.rows(), D});
  buf.fill(-1.f);  // poison
  dispatch_forward(ctx, buf, x, r);
  for (int64_t a = 0; a < N * 2; ++a) {
    if (r.row(a) < 0) continue;
    for (int64_t c = 0; c < D; ++c) EXPECT_EQ(buf.f32()[r.row(a) * D + c], 1000 * (a / 2) + c);
  }
  // The group-major buffer holds each group's rows contiguously, slots in order.
  for (int64_t row = 0; row < r.rows(); ++row) EXPECT_NE(buf.f32()[row * D], -1.f);
  // Combine with weight 1 of the identity gives back each kept token times its kept count.
  Route ones = r;
  ones.weight = zeros({N * 2});
  ones.weight.fill(1.f);
  Tensor y = zeros({N, D});
  y.fill(-7.f);
  combine_forward(ctx, y, buf, ones);
  const std::vector<int32_t> slot = ints(r.slot);
  for (int64_t i = 0; i < N; ++i) {
    int kept = (slot[2 * i] >= 0) + (slot[2 * i + 1] >= 0);
    EXPECT_EQ(y.f32()[i * D + 1], kept * (1000.f * i + 1)) << "token " << i;
  }
}

TEST(Dispatch, CombineGradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(4);
  const int64_t N = 7, G = 3, D = 4;
  TokensChooseParams prm;
  prm.k = 2, prm.capacity_factor = 1.0f;
  Route r = tokens_choose(random_probs(N, G, rng), prm);
  Tensor out = testing::randn({r.rows(), D}, rng), R = testing::randn({N, D}, rng);
  Tensor w = r.weight.clone();
  auto loss = [&] {
    Route rr = r;
    rr.weight = w;  // a view: the finite-difference steps on w move these weights
    Tensor y = zeros({N, D});
    combine_forward(ctx, y, out, rr);
    return testing::dot(y, R);
  };
  Tensor dout = zeros({r.rows(), D});
  Tensor dw = zeros({N * 2});
  combine_backward(ctx, dout, dw, R, out, r);
  testing::expect_gradient("dout", out, dout, loss);
  testing::expect_gradient("dweight", w, dw, loss);
  Tensor x = testing::randn({N, D}, rng), Rb = testing::randn({r.rows(), D}, rng);
  auto dloss = [&] {
    Tensor b = zeros({r.rows(), D});
    dispatch_forward(ctx, b, x, r);
    return testing::dot(b, Rb);
  };
  Tensor dx = zeros({N, D});
  dispatch_backward(ctx, dx, Rb, r);
  testing::expect_gradient("dispatch dx", x, dx, dloss);
}

TEST(RouteWeights, GradientThroughScoresMatchesFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(5);
  const int64_t N = 5, G = 4;
  for (ScoreFn fn : {ScoreFn::softmax, ScoreFn::sigmoid})
    for (bool renorm : {false, true}) {
      Tensor logits = testing::randn({N, G}, rng), R = testing::randn({N * 2}, rng);
      TokensChooseParams prm;
      prm.k = 2, prm.capacity_factor = 4, prm.renormalize = renorm;
      Tensor probs = zeros({N, G});
      router_scores(ctx, probs, logits, fn);
      const Route r0 = tokens_choose(probs, prm);
      const std::vector<int32_t> group = ints(r0.group);
      // The choice is fixed (not differentiated); the weights are.
      auto loss = [&] {
        Tensor pt = zeros({N, G});
        router_scores(ctx, pt, logits, fn);
        const float* p = pt.f32();
        double s = 0;
        for (int64_t i = 0; i < N; ++i) {
          float S = 0;
          for (int j = 0; j < 2; ++j) S += p[i * G + group[i * 2 + j]];
          for (int j = 0; j < 2; ++j) {
            float w = p[i * G + group[i * 2 + j]];
            s += (renorm ? w / S : w) * R.f32()[i * 2 + j];
          }
        }
        return s;
      };
      Tensor dweight = R.clone(), dprobs = zeros({N, G}), dl = zeros({N, G});
      route_weights_backward(ctx, dprobs, dweight, probs, r0, renorm);
      router_scores_backward(ctx, dl, dprobs, probs, fn);
      testing::expect_gradient(std::string("dlogits ") + (fn == ScoreFn::softmax ? "softmax" : "sigmoid") +
                                   (renorm ? " renorm" : ""),
                               logits, dl, loss, 1e-3);
    }
}

}  // namespace
}  // namespace sy::ops
