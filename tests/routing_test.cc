// The routing core: Route invariants on random inputs, hand-computed cases
// with ties and overflow, dispatch/combine on tagged payloads, and the
// positions of dispatched rows on hand-made routes.
#include <limits>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

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
  EXPECT_EQ(r.dropped + r.budget_dropped, assigned - kept);
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
            for (auto pr : {SlotPriority::position, SlotPriority::score, SlotPriority::token_order}) {
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
              // TOKEN_ORDER: first come, first served in assignment order - an
              // assignment's slot is the count of its group's earlier ones,
              // dropped once that reaches the capacity.
              if (pr == SlotPriority::token_order) {
                const std::vector<int32_t> slot = ints(r.slot);
                std::vector<int64_t> seen(G, 0);
                for (int64_t a = 0; a < N * k; ++a) {
                  const int64_t s = seen[group[a]]++;
                  EXPECT_EQ(slot[a], s < r.capacity ? s : -1) << "assignment " << a;
                }
              }
            }
      }
}

TEST(Capacity, FloatFractionsDoNotGainARow) {
  EXPECT_EQ(ceil_capacity(0.3f, 10), 3);     // 0.3f = 0.30000001
  EXPECT_EQ(ceil_capacity(1.1f, 100), 110);  // 1.1f = 1.10000002
  EXPECT_EQ(ceil_capacity(0.31f, 10), 4);
  EXPECT_EQ(ceil_capacity(1.25f, 37.0 * 2 / 8), 12);  // 11.5625 -> 12
  // Large capacities keep their fractions and their integers.
  EXPECT_EQ(ceil_capacity(1.f, 1048577.0 * 8 / 256), 32769);  // 32768.03125
  EXPECT_EQ(ceil_capacity(1.f, 1000001.0 / 64), 15626);       // 15625.015625
  EXPECT_EQ(ceil_capacity(1.f, 1e6), 1000000);
  EXPECT_EQ(ceil_capacity(0.3f, 1e7 / 3), 1000000);  // 0.3 x 3333333.33
  EXPECT_EQ(ceil_capacity(0.7f, 1e6), 700000);      // 0.7f = 0.69999999
  EXPECT_EQ(ceil_capacity(1.1f, 123457), 135803);   // 135802.7
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
  // A floor of 3 under C = 2 (min_capacity): t2 keeps its slot by position.
  prm.dropless = false;
  prm.priority = SlotPriority::position;
  prm.min_capacity = 3;
  r = tokens_choose(p, prm);
  EXPECT_EQ(r.capacity, 3);
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, 1, 2, 0}));
  EXPECT_EQ(r.dropped, 0);
  prm.min_capacity = 1;  // under C: no effect
  EXPECT_EQ(tokens_choose(p, prm).capacity, 2);
}

// Priority keys (random token selection): the slots of the table above in
// the keys' order, descending, ties to the lower token. Keys 0.2, 0.7, 0.9,
// 0.1: t2 then t1 take expert 0's two slots and t0 drops; with t0's key
// raised to t1's (0.7, 0.7), t0 wins the tie and t1 drops. Second choices
// still queue behind every first choice.
TEST(TokensChoose, PriorityKeysOrderTheSlots) {
  const Tensor p = probs_of({0.9f, 0.1f, 0.5f, 0.5f, 0.6f, 0.4f, 0.2f, 0.8f}, 4, 2);
  TokensChooseParams prm;
  prm.capacity_factor = 1.0f;
  prm.priority = SlotPriority::score;
  Tensor keys = Tensor::from_host(std::vector<float>{0.2f, 0.7f, 0.9f, 0.1f});
  prm.priority_keys = &keys;
  EXPECT_EQ(ints(tokens_choose(p, prm).slot), (std::vector<int32_t>{-1, 1, 0, 0}));
  keys.f32()[0] = 0.7f;
  EXPECT_EQ(ints(tokens_choose(p, prm).slot), (std::vector<int32_t>{1, -1, 0, 0}));
  // Top-2 over 2 experts at C = ceil(0.5 * 4 * 2 / 2) = 2, keys 0.8, 0.7,
  // 0.9, 0.1 (order t2, t0, t1, t3). First choices: t2 and t0 fill e0, t1
  // drops, t3 takes e1's slot 0. Second choices: t2 takes e1's slot 1; t0,
  // t1 (e1) and t3 (e0) find them full.
  prm.k = 2;
  prm.capacity_factor = 0.5f;
  keys.f32()[0] = 0.8f;
  const Route r = tokens_choose(p, prm);
  EXPECT_EQ(r.capacity, 2);
  // assignments (t, j): groups 0,1 | 0,1 | 0,1 | 1,0
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{0, 1, 0, 1, 0, 1, 1, 0}));
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{1, -1, -1, -1, 0, 1, 0, -1}));
  prm.priority = SlotPriority::position;
  EXPECT_THROW(tokens_choose(p, prm), Error);  // keys only order SCORE priority
}

// Slots token by token (TOKEN_ORDER priority) against choice rank by choice rank
// (POSITION), top-2 over 2 experts at C = ceil(0.5 * 4 * 2 / 2) = 2, the
// table above: assignments (t, j) go to groups 0,1 | 0,1 | 0,1 | 1,0.
// Token by token t0 and t1 take both experts' slots and t2, t3 find them
// full. Choice rank by choice rank t3's first choice (e1) takes e1's slot
// before t1's second choice does, so t1's route depends on a later token.
TEST(TokensChoose, TokenPriorityServesTokenByToken) {
  const Tensor p = probs_of({0.9f, 0.1f, 0.5f, 0.5f, 0.6f, 0.4f, 0.2f, 0.8f}, 4, 2);
  TokensChooseParams prm;
  prm.k = 2, prm.capacity_factor = 0.5f;
  prm.priority = SlotPriority::token_order;
  Route r = tokens_choose(p, prm);
  EXPECT_EQ(r.capacity, 2);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{0, 1, 0, 1, 0, 1, 1, 0}));
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, 0, 1, 1, -1, -1, -1, -1}));
  EXPECT_EQ(r.dropped, 4);
  prm.priority = SlotPriority::position;
  r = tokens_choose(p, prm);
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, 1, 1, -1, -1, -1, 0, -1}));
  // Top-1: the two orders are one.
  prm.k = 1, prm.capacity_factor = 1.0f;
  const Route a = tokens_choose(p, prm);
  prm.priority = SlotPriority::token_order;
  EXPECT_EQ(ints(tokens_choose(p, prm).slot), ints(a.slot));
}

// The gating alone: logits ln(0.9), ln(0.1) etc. give the hand-computed
// table above's probabilities; top-1, the tie to the lower index, weights =
// p, and every item keeps its choice (no capacity: t2 is not dropped).
// Outputs of the wrong shape or type are refused.
TEST(TokensGate, HandComputedChoiceWithoutCapacity) {
  const std::vector<float> p = {0.9f, 0.1f, 0.5f, 0.5f, 0.6f, 0.4f, 0.2f, 0.8f};
  std::vector<float> l(p.size());
  for (size_t i = 0; i < p.size(); ++i) l[i] = std::log(p[i]);
  const Tensor logits = Tensor::from_host(l).reshape({4, 2});
  Tensor probs = zeros({4, 2}), group = Tensor::from_host(std::vector<int32_t>(4, -7)), weight = zeros({4});
  TokensChooseParams prm;
  prm.capacity_factor = 0.5f;  // not read
  prm.padded = prm.dropless = true;  // not read either (tokens_choose would refuse the pair)
  tokens_gate(host_ctx(), group, weight, probs, logits, ScoreFn::softmax, prm);
  EXPECT_EQ(ints(group), (std::vector<int32_t>{0, 0, 0, 1}));
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(floats(probs)[i], p[i], 1e-6) << i;
  const std::vector<float> w = floats(weight);
  EXPECT_EQ(w, (std::vector<float>{floats(probs)[0], floats(probs)[2], floats(probs)[4], floats(probs)[7]}));
  prm.k = 2;  // group and weight hold N*k = 8
  EXPECT_THROW(tokens_gate(host_ctx(), group, weight, probs, logits, ScoreFn::softmax, prm), Error);
  prm.k = 1;
  Tensor fgroup = zeros({4});
  EXPECT_THROW(tokens_gate(host_ctx(), fgroup, weight, probs, logits, ScoreFn::softmax, prm), Error);
}

// A NaN score ranks last, as -inf (ties to the lower group): a row of NaN
// still gets k distinct groups in range, and a NaN never beats a number.
TEST(TokensChoose, NanScoresRankLast) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor p = probs_of({nan, nan, nan, nan,    // t0 -> e0, e1
                             0.1f, nan, 0.3f, 0.6f,  // t1 -> e3, e2
                             nan, 0.f, nan, nan},   // t2 -> e1, e0
                            3, 4);
  TokensChooseParams prm;
  prm.k = 2;
  prm.dropless = true;
  const Route r = tokens_choose(p, prm);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{0, 1, 3, 2, 1, 0}));
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

// A padded route is the same route with expert g's rows at g C: the same
// groups, weights, slots and counts; offsets g C on the tensor and the host;
// G C rows; the host part set without counting (assigned N k, dropped -1).
TEST(TokensChoose, PaddedIsTheSameRouteAtFixedOffsets) {
  Rng rng(31);
  for (const auto& [N, G, k, cf] : std::vector<std::tuple<int64_t, int64_t, int, float>>{
           {37, 5, 2, 0.7f}, {64, 8, 1, 1.25f}, {10, 4, 3, 4.0f}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " G=" << G << " k=" << k);
    const Tensor probs = random_probs(N, G, rng);
    TokensChooseParams p;
    p.k = k, p.capacity_factor = cf, p.priority = SlotPriority::score;
    const Route packed = tokens_choose(probs, p);
    p.padded = true;
    const Route padded = tokens_choose(probs, p);
    EXPECT_FALSE(packed.padded);
    EXPECT_TRUE(padded.padded);
    EXPECT_EQ(ints(padded.group), ints(packed.group));
    EXPECT_EQ(floats(padded.weight), floats(packed.weight));
    EXPECT_EQ(ints(padded.slot), ints(packed.slot));
    EXPECT_EQ(ints(padded.count), ints(packed.count));
    EXPECT_EQ(padded.capacity, packed.capacity);
    std::vector<int32_t> offsets;
    for (int64_t g = 0; g <= G; ++g) offsets.push_back(static_cast<int32_t>(g * padded.capacity));
    EXPECT_EQ(ints(padded.offset), offsets);
    EXPECT_EQ(padded.host_offset, offsets);
    EXPECT_EQ(padded.rows(), G * padded.capacity);
    EXPECT_EQ(padded.assigned, N * k);
    EXPECT_EQ(padded.dropped, -1);
    const std::vector<int32_t> group = ints(padded.group), slot = ints(padded.slot);
    for (int64_t a = 0; a < N * k; ++a)
      EXPECT_EQ(padded.row(a), slot[a] < 0 ? -1 : group[a] * padded.capacity + slot[a]);
  }
}

TEST(TokensChoose, PaddedRefusesDroplessAndTheBudget) {
  Rng rng(32);
  const Tensor probs = random_probs(12, 4, rng);
  TokensChooseParams p;
  p.padded = true, p.dropless = true;
  EXPECT_THROW(tokens_choose(probs, p), Error);
  p.dropless = false;
  Route r = tokens_choose(probs, p);
  BudgetParams b;
  b.cost.assign(4, 1.f);
  EXPECT_THROW(apply_budget(host_ctx(), r, probs, b), Error);
}

// pad_to_largest keeps the counted route (groups, slots, counts, drops) and
// moves each group's rows to g M, M the largest count rounded up to the
// multiple, at most the capacity; dropless (capacity = the largest count)
// pads to that count. Expected M by hand from the counts.
TEST(PadToLargest, IsTheCountedRouteAtTheLargestCountsStride) {
  Rng rng(33);
  for (const auto& [N, G, k, cf, multiple, dropless] :
       std::vector<std::tuple<int64_t, int64_t, int, float, int64_t, bool>>{{37, 5, 2, 0.7f, 4, false},
                                                                        {64, 8, 1, 4.0f, 16, false},
                                                                        {64, 8, 2, 1.0f, 1, false},
                                                                        {40, 4, 2, 1.0f, 16, true}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << N << " G=" << G << " k=" << k << " multiple " << multiple);
    const Tensor probs = random_probs(N, G, rng);
    TokensChooseParams p;
    p.k = k, p.capacity_factor = cf, p.dropless = dropless;
    const Route packed = tokens_choose(probs, p);
    Route r = tokens_choose(probs, p);
    pad_to_largest(host_ctx(), r, multiple);
    const std::vector<int32_t> count = ints(packed.count);
    const int64_t most = *std::max_element(count.begin(), count.end());
    const int64_t M = std::min((most + multiple - 1) / multiple * multiple, std::max(packed.capacity, most));
    EXPECT_TRUE(r.padded);
    EXPECT_EQ(r.capacity, M);
    EXPECT_EQ(ints(r.group), ints(packed.group));
    EXPECT_EQ(floats(r.weight), floats(packed.weight));
    EXPECT_EQ(ints(r.slot), ints(packed.slot));
    EXPECT_EQ(ints(r.count), count);
    EXPECT_EQ(r.assigned, packed.assigned);
    EXPECT_EQ(r.dropped, packed.dropped);
    std::vector<int32_t> offsets;
    for (int64_t g = 0; g <= G; ++g) offsets.push_back(static_cast<int32_t>(g * M));
    EXPECT_EQ(ints(r.offset), offsets);
    EXPECT_EQ(r.host_offset, offsets);
    const std::vector<int32_t> group = ints(r.group), slot = ints(r.slot);
    for (int64_t a = 0; a < N * k; ++a) EXPECT_EQ(r.row(a), slot[a] < 0 ? -1 : group[a] * M + slot[a]);
  }
}

TEST(PadToLargest, RefusesAPaddedRouteAndNoMultiple) {
  Rng rng(34);
  const Tensor probs = random_probs(12, 4, rng);
  TokensChooseParams p;
  Route r = tokens_choose(probs, p);
  EXPECT_THROW(pad_to_largest(host_ctx(), r, 0), Error);
  pad_to_largest(host_ctx(), r, 4);
  EXPECT_THROW(pad_to_largest(host_ctx(), r, 4), Error);  // padded now
  p.padded = true;
  Route fixed = tokens_choose(probs, p);
  EXPECT_THROW(pad_to_largest(host_ctx(), fixed, 4), Error);
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

// A route of runs with their own groups against one call per run: group,
// slot and weight of run s are the run's own route with groups + s G, the
// counts and offsets the runs' side by side (offsets shifted by the rows
// before the run).
void expect_runs_concatenate(const Route& whole, const std::vector<Route>& runs, int64_t G) {
  expect_invariants(whole);
  std::vector<int32_t> group, slot, count, offset{0};
  std::vector<float> weight;
  for (size_t s = 0; s < runs.size(); ++s) {
    for (int32_t g : ints(runs[s].group)) group.push_back(g < 0 ? g : g + static_cast<int32_t>(s * G));
    for (int32_t v : ints(runs[s].slot)) slot.push_back(v);
    for (float w : floats(runs[s].weight)) weight.push_back(w);
    for (int32_t c : ints(runs[s].count)) count.push_back(c), offset.push_back(offset.back() + c);
  }
  EXPECT_EQ(whole.num_groups, static_cast<int64_t>(runs.size()) * G);
  EXPECT_EQ(ints(whole.group), group);
  EXPECT_EQ(ints(whole.slot), slot);
  EXPECT_EQ(floats(whole.weight), weight);
  EXPECT_EQ(ints(whole.count), count);
  EXPECT_EQ(ints(whole.offset), offset);
}

TEST(TokensChoose, RunsWithTheirOwnGroupsAreThePerRunRoutes) {
  Rng rng(41);
  for (const auto& [runs, S, G, k, cf, prio] : std::vector<std::tuple<int64_t, int64_t, int64_t, int, float, SlotPriority>>{
           {3, 20, 4, 1, 0.8f, SlotPriority::position}, {4, 9, 5, 2, 0.6f, SlotPriority::score},
           {2, 16, 3, 1, 0.f, SlotPriority::position}, {3, 12, 4, 3, 0.5f, SlotPriority::token_order}}) {
    SCOPED_TRACE(::testing::Message() << runs << " runs of " << S << ", G=" << G << " k=" << k);
    const Tensor probs = random_probs(runs * S, G, rng);
    TokensChooseParams p;
    p.k = k, p.capacity_factor = cf, p.priority = prio, p.dropless = cf == 0.f;
    std::vector<Route> per;
    int64_t longest = 1;
    for (int64_t s = 0; s < runs; ++s) {
      per.push_back(tokens_choose(probs.rows(s * S, (s + 1) * S), p));
      longest = std::max(longest, per.back().capacity);
    }
    p.segment = S;
    const Route whole = tokens_choose(probs, p);
    expect_runs_concatenate(whole, per, G);
    EXPECT_EQ(whole.capacity, p.dropless ? longest : per[0].capacity);  // dropless: one capacity for all runs
  }
}

TEST(GroupsChoose, SegmentsWithTheirOwnGroupsAreThePerSegmentRoutes) {
  Rng rng(42);
  const int64_t S = 10, G = 3;
  const Tensor scores = random_probs(4 * S, G, rng);
  for (int64_t C : {0, 4, 12}) {
    std::vector<Route> per;
    for (int64_t s = 0; s < 4; ++s) per.push_back(groups_choose(scores.rows(s * S, (s + 1) * S), C));
    Route whole;
    ops::groups_choose(host_ctx(), whole, scores, C, S, /*own_groups=*/true);
    expect_runs_concatenate(whole, per, G);
    EXPECT_EQ(whole.k, G);
    EXPECT_EQ(whole.capacity, std::min(C, S));
  }
}

TEST(BalanceBias, MovesTowardBalanceBySign) {
  Tensor bias = zeros({3});
  update_balance_bias(host_ctx(), bias, Tensor::from_host(std::vector<double>{6, 3, 0}), 0.1f);  // mean 3
  EXPECT_EQ(floats(bias), (std::vector<float>{-0.1f, 0.f, 0.1f}));
}

// A step's micro-batches, one row each: the bias moves once, on their sum
// (here 6, 3, 3: mean 4), not on each row (the first row alone would move
// the second group down, the second row alone the third).
TEST(BalanceBias, MovesOnceOnTheRowsSum) {
  Tensor bias = zeros({3});
  const std::vector<double> rows = {4, 3, 1,   // micro-batch 0: mean 8/3
                                    2, 0, 2};  // micro-batch 1: mean 4/3
  update_balance_bias(host_ctx(), bias, Tensor::from_host(rows).reshape({2, 3}), 0.1f);
  EXPECT_EQ(floats(bias), (std::vector<float>{-0.1f, 0.1f, 0.1f}));
  Tensor one = zeros({3});  // a (1, G) load is the (G) load
  update_balance_bias(host_ctx(), one, Tensor::from_host(std::vector<double>{6, 3, 0}).reshape({1, 3}), 0.1f);
  EXPECT_EQ(floats(one), (std::vector<float>{-0.1f, 0.f, 0.1f}));
  EXPECT_THROW(update_balance_bias(host_ctx(), one, Tensor::from_host(rows).reshape({3, 2}), 0.1f), Error);
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

// What depth routing counts on without reading the route back: every segment
// keeps exactly min(capacity, segment) items, ties and all.
TEST(GroupsChoose, EverySegmentKeepsMinOfCapacityAndSegment) {
  Rng rng(5);
  const int64_t N = 24, S = 6;
  Tensor tied = zeros({N, 1});
  tied.fill(0.5f);
  for (const Tensor& scores : {random_probs(N, 1, rng, ScoreFn::sigmoid), tied})
    for (int64_t C : {0, 1, 3, 6, 9}) {
      Route r;
      ops::groups_choose(host_ctx(), r, scores, C, S);
      expect_invariants(r);
      const std::vector<int32_t> group = ints(r.group);
      for (int64_t s0 = 0; s0 < N; s0 += S)
        EXPECT_EQ(std::count(group.begin() + s0, group.begin() + s0 + S, 0), std::min(C, S))
            << "capacity " << C << ", segment at " << s0;
      EXPECT_EQ(r.rows(), N / S * std::min(C, S));
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

// A NaN score ranks last, with -inf (ties by position), as on the GPU
// (column_select.h's key_of): here C = 3 of (NaN, 0.5, -inf, 0.7, NaN) keeps
// items 3, 1 and then the first of the -inf/NaN three, item 0, its weight the NaN.
TEST(GroupsChoose, NanScoresRankLastAsMinusInfinity) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const Tensor s = probs_of({nan, 0.5f, -inf, 0.7f, -nan}, 5, 1);
  Route r = groups_choose(s, 3);
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{0, 0, -1, 0, -1}));
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, 1, -1, 2, -1}));
  EXPECT_TRUE(std::isnan(r.weight.f32()[0]));
  r = groups_choose(s, 2);  // (a NaN compared as itself would take item 1's place: a partial sort's luck)
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{-1, 0, -1, 0, -1}));
  r = groups_choose(s, 4);  // then item 2 (-inf) before item 4 (NaN): by position
  EXPECT_EQ(ints(r.group), (std::vector<int32_t>{0, 0, 0, 0, -1}));
}

// Slots by top score (SlotPriority::score): a NaN top score takes the last
// slots, after -inf's, as on the GPU (routing.cu's slot keys); item 0 NaN.
TEST(TokensChoose, NanTopScoreTakesTheLastSlotByScore) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // 4 items, 1 group, k 1: the top scores are the probabilities themselves.
  const Tensor probs = probs_of({nan, 0.2f, 0.9f, 0.5f}, 4, 1);
  TokensChooseParams p;
  p.k = 1, p.capacity_factor = 0.75f, p.priority = SlotPriority::score;  // capacity 3
  Route r;
  ops::tokens_choose(host_ctx(), r, probs, p);
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{-1, 2, 0, 1}));
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

// Positions of the dispatched rows, poisoned first so that a row the op skips shows up.
std::vector<int32_t> dispatched_positions(const Route& r, int64_t segment) {
  Tensor pos = Tensor::empty({r.rows()}, DType::i32, host_ctx());
  std::fill_n(pos.data<int32_t>(), r.rows(), -7);
  dispatch_positions(host_ctx(), pos, r, segment);
  return ints(pos);
}

TEST(Dispatch, PositionsOfDepthRoutedRows) {
  // Two sequences of 4, each keeping its top 2 (groups choose per segment):
  // (0.1 0.9 0.3 0.8) keeps items 1, 3; (0.7 0.2 0.6 0.5) keeps items 4, 6.
  // Rows are in item order: items 1, 3, 4, 6 at positions 1, 3, 0, 2.
  Route r;
  ops::groups_choose(host_ctx(), r, probs_of({0.1f, 0.9f, 0.3f, 0.8f, 0.7f, 0.2f, 0.6f, 0.5f}, 8, 1), 2, 4);
  EXPECT_EQ(dispatched_positions(r, 4), (std::vector<int32_t>{1, 3, 0, 2}));
  // The threshold route of the predictor, sequences of 3: items 0, 2, 3, 5
  // kept (unequal counts would do as well), at positions 0, 2, 0, 2.
  r = threshold_route({0.9f, 0.1f, 0.6f, 0.7f, 0.2f, 0.8f}, 0.5f);
  EXPECT_EQ(dispatched_positions(r, 3), (std::vector<int32_t>{0, 2, 0, 2}));
  EXPECT_EQ(dispatched_positions(r, 6), (std::vector<int32_t>{0, 2, 3, 5}));
}

TEST(Dispatch, PositionsFollowRowsOfAHandMadeRoute) {
  // N = 4 items in sequences of 2, k = 2, G = 2; assignment a = 2i + j:
  //   item 0: group 1 slot 0,  group 0 slot 0
  //   item 1: group 0 slot 1,  unused
  //   item 2: group 1 dropped over capacity (-1),  group 0 slot 2
  //   item 3: group 1 slot 1,  group 0 dropped by the budget (-2)
  // Rows are group-major: group 0 holds items 0, 1, 2 (rows 0-2), group 1
  // items 0, 3 (rows 3-4); positions i mod 2.
  Route r;
  r.num_items = 4, r.k = 2, r.num_groups = 2, r.capacity = 3;
  r.group = Tensor::from_host(std::vector<int32_t>{1, 0, 0, -1, 1, 0, 1, 0});
  r.slot = Tensor::from_host(std::vector<int32_t>{0, 0, 1, -1, -1, 2, 1, -2});
  r.weight = zeros({8});
  r.count = Tensor::from_host(std::vector<int32_t>{3, 2});
  r.offset = Tensor::from_host(std::vector<int32_t>{0, 3, 5});
  r.host_offset = {0, 3, 5};
  r.assigned = 7, r.dropped = 1, r.budget_dropped = 1;
  EXPECT_EQ(dispatched_positions(r, 2), (std::vector<int32_t>{0, 1, 0, 0, 1}));
  EXPECT_EQ(dispatched_positions(r, 4), (std::vector<int32_t>{0, 1, 2, 0, 3}));
  Tensor wrong = Tensor::empty({5}, DType::i32, host_ctx());
  EXPECT_THROW(dispatch_positions(host_ctx(), wrong, r, 0), std::exception);
  Tensor f32 = zeros({5});
  EXPECT_THROW(dispatch_positions(host_ctx(), f32, r, 2), std::exception);
  Tensor short_pos = Tensor::empty({4}, DType::i32, host_ctx());
  EXPECT_THROW(dispatch_positions(host_ctx(), short_pos, r, 2), std::exception);
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

// Sigmoid scores normalised per row, by hand, and the backward (added, not
// written) against finite differences of a weighted sum of q.
TEST(NormalizeScores, RowsOverTheirSumsByHandAndGradient) {
  Ctx& ctx = host_ctx();
  Tensor p = Tensor::from_host(std::vector<float>{1.f, 3.f, 0.f, 0.5f, 0.25f, 0.25f, 0.f, 0.f, 0.f}).reshape({3, 3});
  Tensor q = zeros({3, 3});
  q.fill(std::nanf(""));
  normalize_scores(ctx, q, p);
  const std::vector<float> want{0.25f, 0.75f, 0.f, 0.5f, 0.25f, 0.25f, 0.f, 0.f, 0.f};  // (a zero row stays 0)
  EXPECT_EQ(q.to_vector<float>(), want);

  Rng rng(8);
  const int64_t N = 4, G = 5;
  Tensor logits = testing::randn({N, G}, rng), R = testing::randn({N, G}, rng);
  auto probs_of = [&] {
    Tensor pt = zeros({N, G});
    router_scores(ctx, pt, logits, ScoreFn::sigmoid);
    return pt;
  };
  auto loss = [&] {
    Tensor pt = probs_of(), qt = zeros({N, G});
    normalize_scores(ctx, qt, pt);
    return testing::dot(qt, R);
  };
  Tensor pt = probs_of(), dp = zeros({N, G}), dl = zeros({N, G});
  dp.fill(1.f);  // added onto: 1 comes off below
  normalize_scores_backward(ctx, dp, R, pt);
  for (int64_t e = 0; e < N * G; ++e) dp.f32()[e] -= 1.f;
  router_scores_backward(ctx, dl, dp, pt, ScoreFn::sigmoid);
  testing::expect_gradient("dlogits through normalised sigmoid scores", logits, dl, loss, 1e-3);
  // Scaling a row leaves q unchanged: its gradient has no component along p.
  for (int64_t i = 0; i < N; ++i) {
    double along = 0;
    for (int64_t g = 0; g < G; ++g) along += dp.f32()[i * G + g] * pt.f32()[i * G + g];
    EXPECT_NEAR(along, 0.0, 1e-6) << "row " << i;
  }
}

// ---- the budget step -------------------------------------------------------

Route with_budget(Route r, const Tensor& scores, const BudgetParams& p) {
  r.slot = r.slot.clone(), r.count = r.count.clone(), r.offset = r.offset.clone();
  apply_budget(host_ctx(), r, scores, p);
  return r;
}

BudgetParams budget_params(std::vector<float> cost, double B, bool causal = false, int64_t segment = 0) {
  BudgetParams p;
  p.cost = std::move(cost), p.budget = B, p.causal = causal, p.segment = segment;
  return p;
}

TEST(Budget, HandComputedBatch) {
  // 4 tokens, top-1, room for all; expert 0 costs 0.5, expert 1 costs 2.
  // Kept cost 2 + 2 + 0.5 + 2 = 6.5 > B N = 1 * 4. Drop order: lowest score
  // first, ties to the later token: t3 (0.6, tie with t2, later) -> 4.5, then
  // t2 (0.6) -> 4.0 <= 4: stop. t0 and t1 keep expert 1, renumbered 0, 1.
  const Tensor p = probs_of({0.2f, 0.8f,   // t0 -> e1 (0.8)
                             0.3f, 0.7f,   // t1 -> e1 (0.7)
                             0.6f, 0.4f,   // t2 -> e0 (0.6)
                             0.4f, 0.6f},  // t3 -> e1 (0.6)
                            4, 2);
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  const Route r0 = tokens_choose(p, prm);
  ASSERT_EQ(ints(r0.slot), (std::vector<int32_t>{0, 1, 0, 2}));
  const Route r = with_budget(r0, p, budget_params({0.5f, 2.f}, 1.0));
  expect_invariants(r);
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{0, 1, -2, -2}));
  EXPECT_EQ(ints(r.count), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(ints(r.offset), (std::vector<int32_t>{0, 0, 2}));
  EXPECT_EQ(r.budget_dropped, 2);
  EXPECT_EQ(r.dropped, 0);
  // Within budget: nothing changes.
  const Route same = with_budget(r0, p, budget_params({0.5f, 2.f}, 1.625));  // 6.5 = 1.625 * 4
  EXPECT_EQ(ints(same.slot), ints(r0.slot));
  EXPECT_EQ(same.budget_dropped, 0);
}

TEST(Budget, HandComputedCausal) {
  // The same tokens with a running budget of B = 1 per position:
  //   t0 may spend 1 - 0 = 1 < 2: dropped;   t1 may spend 2 - 0 = 2: kept (spent 2)
  //   t2 may spend 3 - 2 = 1 >= 0.5: kept (2.5);  t3 may spend 4 - 2.5 = 1.5 < 2: dropped
  const Tensor p = probs_of({0.2f, 0.8f, 0.3f, 0.7f, 0.6f, 0.4f, 0.4f, 0.6f}, 4, 2);
  TokensChooseParams prm;
  prm.capacity_factor = 2;
  const Route r = with_budget(tokens_choose(p, prm), p, budget_params({0.5f, 2.f}, 1.0, true));
  expect_invariants(r);
  EXPECT_EQ(ints(r.slot), (std::vector<int32_t>{-2, 0, 0, -2}));
  EXPECT_EQ(ints(r.count), (std::vector<int32_t>{1, 1}));
  EXPECT_EQ(r.budget_dropped, 2);
  // Runs of 2 (two sequences): t2 starts afresh: may spend 1 >= 0.5; t3: 2 - 0.5 < 2.
  const Route rs = with_budget(tokens_choose(p, prm), p, budget_params({0.5f, 2.f}, 1.0, true, 2));
  EXPECT_EQ(ints(rs.slot), (std::vector<int32_t>{-2, 0, 0, -2}));
  // Top-2, one token, costs 1 (e0), 2 (e1), 4 (e2), B = 3.5: its choices e2
  // (0.5) and e1 (0.3) cost 6; the lower score (e1) goes first -> 4 > 3.5,
  // then e2 -> 0: nothing is left, whatever e0 would have cost.
  const Tensor q = probs_of({0.2f, 0.3f, 0.5f}, 1, 3);
  prm.k = 2;
  const Route r2 = with_budget(tokens_choose(q, prm), q, budget_params({1.f, 2.f, 4.f}, 3.5, true));
  EXPECT_EQ(ints(r2.group), (std::vector<int32_t>{2, 1}));
  EXPECT_EQ(ints(r2.slot), (std::vector<int32_t>{-2, -2}));
  // At B = 4 dropping e1 (the lower score) leaves 4 <= 4: e2 stays.
  const Route r3 = with_budget(tokens_choose(q, prm), q, budget_params({1.f, 2.f, 4.f}, 4.0, true));
  EXPECT_EQ(ints(r3.slot), (std::vector<int32_t>{0, -2}));
}

TEST(Budget, ExpertChoiceDropsLowestScores) {
  // Expert choice, 2 experts x 2 tokens of 4; costs 1 and 3; B = 1:
  // kept cost 2 * 1 + 2 * 3 = 8 > 4. Lowest scores first.
  const Tensor s = probs_of({0.9f, 0.1f,    // t0: e0 (0.9)
                             0.8f, 0.2f,    // t1: e0 (0.8)
                             0.1f, 0.7f,    // t2: e1 (0.7)
                             0.3f, 0.95f},  // t3: e1 (0.95)
                            4, 2);
  const Route r0 = groups_choose(s, 2);
  const Route r = with_budget(r0, s, budget_params({1.f, 3.f}, 1.0));
  expect_invariants(r);
  // Drop order among kept: t2/e1 (0.7) -> 5, then t1/e0 (0.8) -> 4: stop.
  const std::vector<int32_t> slot = ints(r.slot);
  EXPECT_EQ(slot[2 * 2 + 1], -2);
  EXPECT_EQ(slot[1 * 2 + 0], -2);
  EXPECT_EQ(slot[0 * 2 + 0], 0);
  EXPECT_EQ(slot[3 * 2 + 1], 0);
  EXPECT_EQ(r.budget_dropped, 2);
}

// The kept cost, summed in assignment order over [a0, a1) (the order the
// bound is stated in).
double kept_chain(const Route& r, const std::vector<float>& cost, int64_t a0, int64_t a1, double start = 0) {
  const std::vector<int32_t> group = ints(r.group), slot = ints(r.slot);
  for (int64_t a = a0; a < a1; ++a)
    if (group[a] >= 0 && slot[a] >= 0) start += cost[group[a]];
  return start;
}

// Checks a budget step's result `r` against the route `before` it.
void expect_budget_kept(const Route& before, const Route& r, const Tensor& scores, const BudgetParams& p) {
  expect_invariants(r);
  const int64_t N = r.num_items, k = r.k, G = r.num_groups;
  const std::vector<int32_t> group = ints(r.group), slot = ints(r.slot), slot0 = ints(before.slot);
  ASSERT_EQ(group, ints(before.group));
  EXPECT_EQ(r.dropped, before.dropped);
  auto score = [&](int64_t a) { return scores.f32()[(a / k) * G + group[a]]; };
  auto drops_first = [&](int64_t a, int64_t b) { return score(a) < score(b) || (score(a) == score(b) && a > b); };
  int64_t cut = 0;
  for (int64_t a = 0; a < N * k; ++a) {
    if (slot[a] == -2) {
      ++cut;
      ASSERT_GE(slot0[a], 0) << "only kept assignments are dropped by the budget";
      EXPECT_GT(p.cost[group[a]], 0.f) << "a free assignment was dropped";
    } else if (slot0[a] < 0) {
      EXPECT_EQ(slot[a], slot0[a]);
    }
  }
  EXPECT_EQ(r.budget_dropped, cut);
  // Survivors keep their order within each group.
  for (int64_t a = 0; a < N * k; ++a)
    for (int64_t b = 0; b < N * k; ++b)
      if (slot[a] >= 0 && slot[b] >= 0 && group[a] == group[b] && slot0[a] < slot0[b]) EXPECT_LT(slot[a], slot[b]);
  // Priority and minimality over a unit: the whole batch, or one item (causal).
  auto check_unit = [&](int64_t a0, int64_t a1, double spent, double allowed) {
    std::vector<int64_t> dropped;
    for (int64_t a = a0; a < a1; ++a)
      if (slot[a] == -2) dropped.push_back(a);
    for (int64_t d : dropped)
      for (int64_t a = a0; a < a1; ++a)
        if (slot[a] >= 0 && p.cost[group[a]] > 0) EXPECT_TRUE(drops_first(d, a)) << "dropped " << d << " before " << a;
    if (dropped.empty()) return;
    // The last one dropped (highest in the drop order) was needed.
    const int64_t last = *std::max_element(dropped.begin(), dropped.end(),
                                           [&](int64_t x, int64_t y) { return drops_first(x, y); });
    Route back = r;
    back.slot = r.slot.clone();
    back.slot.data<int32_t>()[last] = 0;
    EXPECT_GT(kept_chain(back, p.cost, a0, a1, spent), allowed) << "dropping " << last << " was not needed";
  };
  if (!p.causal) {
    EXPECT_LE(kept_chain(r, p.cost, 0, N * k), p.budget * N);
    check_unit(0, N * k, 0, p.budget * N);
    return;
  }
  const int64_t S = p.segment > 0 ? p.segment : N;
  for (int64_t s0 = 0; s0 < N; s0 += S) {
    double spent = 0;
    for (int64_t t = 0; t < S; ++t) {
      const int64_t i = s0 + t;
      const double allowed = p.budget * static_cast<double>(t + 1);
      check_unit(i * k, (i + 1) * k, spent, allowed);
      spent = kept_chain(r, p.cost, i * k, (i + 1) * k, spent);
      ASSERT_LE(spent, allowed) << "item " << i << " of a run from " << s0;
    }
  }
}

// The property: on random inputs, over sizes, k, both policies (tokens choose
// by position, by score and token by token, with capacity or dropless;
// expert choice), batch
// and causal budgets, budgets from 0 up, costs dyadic (exact sums) or any
// floats, the kept cost never exceeds the budget, only kept costly
// assignments are dropped, lowest score first, and no more than needed.
TEST(Budget, NeverExceededOnRandomInputs) {
  Rng rng(11);
  int64_t cases = 0, with_drops = 0;
  for (int64_t N : {1, 3, 7, 37, 128})
    for (int64_t G : {1, 2, 5, 8})
      for (int policy = 0; policy < 5; ++policy)
        for (int k : {1, 2, 3}) {
          if (k > G || (policy == 3 && k > 1)) continue;
          const Tensor probs = random_probs(N, G, rng);
          Route before;
          if (policy != 3) {
            TokensChooseParams prm;
            prm.k = k;
            prm.priority = policy == 1 ? SlotPriority::score : policy == 4 ? SlotPriority::token_order : SlotPriority::position;
            prm.dropless = policy == 2;
            prm.capacity_factor = 1.0f;
            before = tokens_choose(probs, prm);
          } else {
            before = groups_choose(probs, (N + G - 1) / G);  // expert choice
          }
          for (bool dyadic : {true, false}) {
            std::vector<float> cost(G);
            for (float& c : cost)
              c = dyadic ? static_cast<float>(static_cast<int>(rng.uniform() * 33) / 8.0)  // 0 .. 4 in eighths
                         : static_cast<float>(rng.uniform() * 3);
            for (double B : {0.0, 0.3, 0.75, 1.0, 2.5})
              for (int mode = 0; mode < 3; ++mode) {
                const bool causal = mode > 0;
                const int64_t segment = mode == 2 && N % 2 == 0 ? N / 2 : 0;
                const BudgetParams p = budget_params(cost, B, causal, segment);
                SCOPED_TRACE(::testing::Message() << "N=" << N << " G=" << G << " k=" << k << " policy=" << policy
                                                  << " B=" << B << " mode=" << mode << " dyadic=" << dyadic);
                const Route r = with_budget(before, probs, p);
                expect_budget_kept(before, r, probs, p);
                ++cases;
                with_drops += r.budget_dropped > 0;
              }
          }
        }
  EXPECT_GT(with_drops, cases / 3) << "the budget should bind in many cases";
}

// A causal budget decides token t from tokens 0..t only: change every token
// from position m on (new router probabilities) and the decisions of tokens
// before m stay. Routes from tokens choose by position, top-1 with capacity
// (itself causal) and top-2 dropless. The batch budget is the control: there
// later tokens do move earlier decisions.
TEST(Budget, CausalDecisionsIgnoreLaterTokens) {
  Rng rng(12);
  const int64_t N = 64, G = 6;
  const std::vector<float> cost = {0.25f, 0.25f, 0.5f, 1.f, 2.f, 2.f};
  int batch_moved = 0;
  for (int k : {1, 2})
    for (int64_t segment : {0, 16})
      for (int trial = 0; trial < 20; ++trial) {
        TokensChooseParams prm;
        prm.k = k;
        prm.capacity_factor = 1.0f;
        prm.dropless = k == 2;
        const Tensor probs = random_probs(N, G, rng);
        Tensor later = probs.clone();
        const int64_t m = 1 + static_cast<int64_t>(rng.uniform() * (N - 2));
        const Tensor fresh = random_probs(N, G, rng);
        std::copy(fresh.f32() + m * G, fresh.f32() + N * G, later.f32() + m * G);
        auto kept = [&](const Tensor& p, bool causal) {
          const Route r = with_budget(tokens_choose(p, prm), p, budget_params(cost, 0.6, causal, segment));
          std::vector<int> v;
          const std::vector<int32_t> slot = ints(r.slot), group = ints(r.group);
          for (int64_t a = 0; a < m * k; ++a) v.push_back(slot[a] >= 0 ? group[a] : -1 - (slot[a] == -2));
          return v;
        };
        EXPECT_EQ(kept(probs, true), kept(later, true)) << "k=" << k << " segment=" << segment << " m=" << m;
        batch_moved += kept(probs, false) != kept(later, false);
      }
  EXPECT_GT(batch_moved, 0) << "control: the batch budget should depend on later tokens";
}

}  // namespace
}  // namespace sy::ops
