// Group-limited routing (ops/group_limit.h): hand-computed rows (group
// scores from the top_n best, ties to the lower group, the bias in the
// ranking but not in the output, NaN last), the CUDA kernels' steps
// (ops/cuda/group_limit_rows.h) against the CPU reference on rows full of
// ties, and the tokens-choose route it limits: every token within its kept
// groups, the top-k of the kept experts, and the unlimited route where every
// group is kept.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include <cstring>

#include "core/rng.h"
#include "ops/cuda/group_limit_rows.h"
#include "ops/group_limit.h"
#include "ops/routing.h"

namespace sy::ops {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> limited(const std::vector<float>& key, int64_t N, int64_t G, const GroupLimit& g,
                           const std::vector<float>& bias = {}) {
  const Tensor k = Tensor::from_host(key, {N, G});
  Tensor b = bias.empty() ? Tensor() : Tensor::from_host(bias);
  Tensor out = Tensor::empty({N, G}, DType::f32, host_ctx());
  limit_groups(host_ctx(), out, k, bias.empty() ? nullptr : &b, g);
  return out.to_vector<float>();
}

GroupLimit limit(int64_t groups, int64_t kept, int64_t top_n) {
  GroupLimit g;
  g.groups = groups;
  g.kept = kept;
  g.top_n = top_n;
  return g;
}

// Six experts in three groups of two. Group scores with top_n = 2:
// 0.30 + 0.05 = 0.35, 0.25 + 0.20 = 0.45, 0.10 + 0.10 = 0.20: group 1 wins
// alone, groups 1 and 0 as two. With top_n = 1 (the best one): 0.30, 0.25,
// 0.10: group 0.
TEST(LimitGroups, KeepsTheBestGroupsBySumOfTheirTopN) {
  const std::vector<float> row = {0.30f, 0.05f, 0.25f, 0.20f, 0.10f, 0.10f};
  EXPECT_EQ(limited(row, 1, 6, limit(3, 1, 2)), (std::vector<float>{-kInf, -kInf, 0.25f, 0.20f, -kInf, -kInf}));
  EXPECT_EQ(limited(row, 1, 6, limit(3, 2, 2)), (std::vector<float>{0.30f, 0.05f, 0.25f, 0.20f, -kInf, -kInf}));
  EXPECT_EQ(limited(row, 1, 6, limit(3, 1, 1)), (std::vector<float>{0.30f, 0.05f, -kInf, -kInf, -kInf, -kInf}));
  EXPECT_EQ(limited(row, 1, 6, limit(3, 3, 2)), row);
}

// The bias moves the ranking (s = key + b) but the output keeps the key:
// +0.3 on expert 4 makes group 2's score 0.40 + 0.10 = 0.50 > 0.45.
TEST(LimitGroups, BiasRanksGroupsButStaysOutOfTheKeys) {
  const std::vector<float> row = {0.30f, 0.05f, 0.25f, 0.20f, 0.10f, 0.10f};
  const std::vector<float> bias = {0, 0, 0, 0, 0.3f, 0};
  EXPECT_EQ(limited(row, 1, 6, limit(3, 1, 2), bias),
            (std::vector<float>{-kInf, -kInf, -kInf, -kInf, 0.10f, 0.10f}));
}

// Equal group scores go to the lower group; a NaN ranks as -inf: with
// top_n = 2 a NaN makes its group's score -inf, with top_n = 1 its group is
// scored by the other expert.
TEST(LimitGroups, TiesToTheLowerGroupAndNanLast) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(limited({0.2f, 0.1f, 0.1f, 0.2f}, 1, 4, limit(2, 1, 2)), (std::vector<float>{0.2f, 0.1f, -kInf, -kInf}));
  EXPECT_EQ(limited({0.1f, 0.2f, 0.2f, 0.1f}, 1, 4, limit(2, 1, 1)), (std::vector<float>{0.1f, 0.2f, -kInf, -kInf}));
  const std::vector<float> with_nan = limited({nan, 0.9f, 0.1f, 0.1f}, 1, 4, limit(2, 1, 2));
  EXPECT_EQ(with_nan[0], -kInf);
  EXPECT_EQ(with_nan[2], 0.1f);
  EXPECT_EQ(with_nan[3], 0.1f);
  const std::vector<float> best_one = limited({nan, 0.9f, 0.1f, 0.1f}, 1, 4, limit(2, 1, 1));
  EXPECT_TRUE(std::isnan(best_one[0]));  // (the key as given; the top-k ranks it last)
  EXPECT_EQ(best_one[1], 0.9f);
  EXPECT_EQ(best_one[2], -kInf);
}

TEST(LimitGroups, RefusesGroupsThatDoNotFit) {
  auto expect_refused = [](const GroupLimit& g, const std::string& want) {
    try {
      limited(std::vector<float>(6, 0.f), 1, 6, g);
      ADD_FAILURE() << "not refused: " << want;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  expect_refused(limit(4, 1, 1), "4 routing groups for 6 experts (they must divide them)");
  expect_refused(limit(3, 4, 1), "4 groups kept of 3");
  expect_refused(limit(3, 1, 3), "its 3 best of 2 experts");
}

// The kernels' steps (a thread a group score, a thread a group rank) give
// the CPU reference's output bit for bit, on keys from a few values (ties
// within and across groups), with and without a bias, some NaN.
TEST(LimitGroups, KernelStepsEqualTheReference) {
  Rng rng(11);
  const float values[] = {0.f, 0.125f, 0.25f, 0.5f, 1.f, -0.25f};
  for (const auto& [R, M] : std::vector<std::pair<int64_t, int64_t>>{{1, 5}, {2, 4}, {4, 2}, {8, 8}, {16, 1}, {3, 7}})
    for (int64_t top_n = 1; top_n <= std::min<int64_t>(M, GroupLimit::kMaxTopN); ++top_n)
      for (int64_t kept = 1; kept <= R; kept += std::max<int64_t>(1, R / 3))
        for (bool with_bias : {false, true}) {
          SCOPED_TRACE(testing::Message() << R << " groups of " << M << ", top " << top_n << ", kept " << kept
                                          << (with_bias ? ", bias" : ""));
          const int64_t N = 20, G = R * M;
          std::vector<float> key(N * G), bias(G);
          for (float& v : key) v = values[rng.below(6)];
          for (float& v : bias) v = values[rng.below(6)] / 4;
          key[3] = std::numeric_limits<float>::quiet_NaN();
          const GroupLimit g = limit(R, kept, top_n);
          const std::vector<float> ref = limited(key, N, G, g, with_bias ? bias : std::vector<float>{});
          const float* b = with_bias ? bias.data() : nullptr;
          for (int64_t i = 0; i < N; ++i) {
            std::vector<float> scores(R);
            for (int64_t j = 0; j < R; ++j) scores[j] = group_score(key.data() + i * G, b, j, M, top_n);
            for (int64_t e = 0; e < G; ++e) {
              const float want = ref[i * G + e];
              const float got = group_kept(scores.data(), R, e / M, kept) ? key[i * G + e] : -kInf;
              ASSERT_TRUE(std::memcmp(&want, &got, sizeof want) == 0) << "item " << i << " expert " << e << ": "
                                                                        << got << " against " << want;
            }
          }
        }
}

// tokens_choose with a group limit: each token's k experts lie in at most
// `kept` groups and are the top-k of p + bias among the experts of the groups
// limit_groups kept; keeping every group gives the unlimited route bit for bit.
TEST(LimitGroups, TokensChooseStaysWithinTheKeptGroups) {
  Rng rng(5);
  const int64_t N = 64, G = 12, R = 4, M = G / R;
  Tensor logits = Tensor::empty({N, G}, DType::f32, host_ctx()), probs = Tensor::empty({N, G}, DType::f32, host_ctx());
  for (int64_t i = 0; i < N * G; ++i) logits.f32()[i] = static_cast<float>(rng.normal() * 2);
  router_scores(host_ctx(), probs, logits, ScoreFn::softmax);
  std::vector<float> b(G);
  for (float& v : b) v = static_cast<float>(rng.normal() * 0.05);
  const Tensor bias = Tensor::from_host(b);
  for (int64_t kept : {1, 2}) {
    SCOPED_TRACE(testing::Message() << "kept " << kept);
    TokensChooseParams p;
    p.k = 3;
    p.capacity_factor = 8;
    p.selection_bias = &bias;
    p.group_limit = limit(R, kept, 2);
    Route r;
    tokens_choose(host_ctx(), r, probs, p);
    const std::vector<float> keys = limited(probs.to_vector<float>(), N, G, p.group_limit, b);
    const std::vector<int32_t> group = r.group.to_vector<int32_t>();
    for (int64_t i = 0; i < N; ++i) {
      std::set<int64_t> groups;
      for (int64_t j = 0; j < p.k; ++j) groups.insert(group[i * p.k + j] / M);
      EXPECT_LE(static_cast<int64_t>(groups.size()), kept) << "token " << i;
      // The k best of p + bias among the kept experts, in order.
      std::vector<int64_t> order;
      for (int64_t g = 0; g < G; ++g)
        if (keys[i * G + g] != -kInf) order.push_back(g);
      ASSERT_EQ(static_cast<int64_t>(order.size()), kept * M);
      const float* pi = probs.f32() + i * G;
      std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return pi[x] + b[x] > pi[y] + b[y]; });
      for (int64_t j = 0; j < p.k; ++j) EXPECT_EQ(group[i * p.k + j], order[j]) << "token " << i << " choice " << j;
    }
  }
  TokensChooseParams all;
  all.k = 3;
  all.selection_bias = &bias;
  Route unlimited, every_group;
  tokens_choose(host_ctx(), unlimited, probs, all);
  all.group_limit = limit(R, R, 2);
  tokens_choose(host_ctx(), every_group, probs, all);
  EXPECT_EQ(unlimited.group.to_vector<int32_t>(), every_group.group.to_vector<int32_t>());
  EXPECT_EQ(unlimited.slot.to_vector<int32_t>(), every_group.slot.to_vector<int32_t>());
  EXPECT_EQ(unlimited.weight.to_vector<float>(), every_group.weight.to_vector<float>());
}

TEST(LimitGroups, TokensChooseRefusesTooFewExperts) {
  Tensor probs = Tensor::zeros({4, 6}, DType::f32, host_ctx());
  TokensChooseParams p;
  p.k = 3;
  p.group_limit = limit(3, 1, 2);
  Route r;
  try {
    tokens_choose(host_ctx(), r, probs, p);
    ADD_FAILURE() << "a top-3 within one group of 2 was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top-3 within 1 of 3 routing groups of 6 experts"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace sy::ops
