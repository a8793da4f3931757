// The expert exchange's plan is a pure host function: rows per peer and the
// permutation from received (source-major) to expert-major rows, checked on
// a hand-worked case and on random counts against a direct construction.
#include <gtest/gtest.h>

#include <numeric>

#include "core/rng.h"
#include "runtime/expert_exchange.h"

namespace sy {
namespace {

// W = 2 ranks, El = 2 local experts (G = 4). This rank holds 1, 2 rows for
// experts 0, 1 (peer 0's) and 0, 3 for experts 2, 3 (peer 1's). It receives
// from peer 0: 1 row for its expert 0 and 2 for expert 1; from peer 1: 4 and 0.
TEST(ExpertExchangePlan, HandWorkedCase) {
  const ExchangePlan p = plan_exchange({1, 2, 0, 3}, {1, 2, 4, 0}, 2, 2);
  EXPECT_EQ(p.send_rows, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(p.recv_rows, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(p.local_rows, 6);
  // Received rows: [p0e0 | p0e1 p0e1 | p1e0 x4]; expert-major: e0 = p0's 1 row
  // (received row 0) then p1's 4 (rows 3..6); e1 = p0's 2 (rows 1, 2).
  EXPECT_EQ(p.perm, (std::vector<int64_t>{0, 3, 4, 5, 6, 1, 2}));
  EXPECT_EQ(p.offsets, (std::vector<int32_t>{0, 5, 7}));
  EXPECT_EQ(p.received_rows(), 7);
}

TEST(ExpertExchangePlan, RandomCountsMatchADirectConstruction) {
  Rng rng(9);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t W = 1 + static_cast<int64_t>(rng.below(4)), El = 1 + static_cast<int64_t>(rng.below(3));
    std::vector<int64_t> send(W * El), recv(W * El);
    for (auto& c : send) c = static_cast<int64_t>(rng.below(4));
    for (auto& c : recv) c = static_cast<int64_t>(rng.below(4));
    const ExchangePlan p = plan_exchange(send, recv, W, El);
    // Label each received row (source s, expert e, index i); expert-major
    // order must list, per expert, source 0's rows, then source 1's, ...
    std::vector<std::tuple<int64_t, int64_t, int64_t>> received;
    for (int64_t s = 0; s < W; ++s)
      for (int64_t e = 0; e < El; ++e)
        for (int64_t i = 0; i < recv[s * El + e]; ++i) received.emplace_back(s, e, i);
    ASSERT_EQ(static_cast<int64_t>(p.perm.size()), static_cast<int64_t>(received.size()));
    std::vector<std::tuple<int64_t, int64_t, int64_t>> want;
    for (int64_t e = 0; e < El; ++e)
      for (int64_t s = 0; s < W; ++s)
        for (int64_t i = 0; i < recv[s * El + e]; ++i) want.emplace_back(s, e, i);
    for (size_t k = 0; k < p.perm.size(); ++k) ASSERT_EQ(received[p.perm[k]], want[k]) << "trial " << trial;
    for (int64_t e = 0; e < El; ++e) {
      int64_t n = 0;
      for (int64_t s = 0; s < W; ++s) n += recv[s * El + e];
      EXPECT_EQ(p.offsets[e + 1] - p.offsets[e], n);
    }
  }
}

// The deduplicated dispatch's source plan by hand: W = 2 ranks of El = 2
// experts, 3 tokens top-2. t0 -> e0, e1 (both rank 0); t1 -> e2, e0 (ranks
// 1, 0); t2 -> e3, e2 (both rank 1). Group-major rows by position: e0: t0,
// t1 (rows 0, 1); e1: t0 (2); e2: t1, t2 (3, 4); e3: t2 (5). Rank 0 gets t0
// and t1, rank 1 t1 and t2: 4 token rows for 6 assignment rows.
TEST(ExpertExchangeTokens, HandWorkedSourcePlan) {
  const TokenRows t = plan_token_rows({0, 1, 2, 0, 3, 2}, {0, 2, 3, 1, 5, 4}, 3, 2, 2, 2, 6);
  EXPECT_EQ(t.count, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t.group, (std::vector<int32_t>{0, -1, 1, 0, 1, -1}));  // t1: rank 1 first (its first choice)
  EXPECT_EQ(t.slot, (std::vector<int32_t>{0, -1, 0, 1, 1, -1}));
  EXPECT_EQ(t.row_in_message, (std::vector<int32_t>{0, 1, 0, 0, 1, 1}));
  // A dropped assignment (row -1) sends nothing: t2 keeps only e3.
  const TokenRows d = plan_token_rows({0, 1, 2, 0, 3, 2}, {0, 2, 3, 1, 4, -1}, 3, 2, 2, 2, 5);
  EXPECT_EQ(d.count, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(d.row_in_message, (std::vector<int32_t>{0, 1, 0, 0, 1}));
}

// Both paths between W simulated ranks on tagged rows (the tag of token i
// of rank r is r * 1000 + i): every rank's expert-major buffer through the
// deduplicated dispatch (token rows, row indices, plan_expert_rows' gather)
// equals the counted exchange's (group-major rows, plan_exchange's perm),
// and the destination's route of token rows to experts names exactly the
// expert rows that gather from each token row. Random routes, unused
// choices (no expert) and capacity drops (an expert, no row) too.
TEST(ExpertExchangeTokens, DedupEqualsTheCountedExchangeOnTaggedRows) {
  Rng rng(21);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t W = 1 + static_cast<int64_t>(rng.below(4)), El = 1 + static_cast<int64_t>(rng.below(3));
    const int64_t G = W * El, k = 1 + static_cast<int64_t>(rng.below(std::min<uint64_t>(4, G)));
    const int64_t N = static_cast<int64_t>(rng.below(12));
    SCOPED_TRACE(::testing::Message() << "trial " << trial << ": " << W << " ranks x " << El << " experts, "
                                      << N << " tokens top-" << k);
    // Per rank: groups (distinct per token), kept or dropped, buffer rows by expert then token.
    std::vector<std::vector<int32_t>> group(W);
    std::vector<std::vector<int64_t>> row(W), count(W);  // count: (G) rows per expert
    for (int64_t r = 0; r < W; ++r) {
      group[r].assign(N * k, -1);
      for (int64_t i = 0; i < N; ++i) {
        std::vector<int32_t> experts(G);
        for (int64_t g = 0; g < G; ++g) experts[g] = static_cast<int32_t>(g);
        for (int64_t j = 0; j < k; ++j) {  // k distinct experts
          const int64_t pick = j + static_cast<int64_t>(rng.below(G - j));
          std::swap(experts[j], experts[pick]);
          group[r][i * k + j] = rng.below(5) == 0 ? -1 : experts[j];  // some unused
        }
      }
      // Capacity drops: an assignment with its expert but no buffer row (a
      // token's only one on a rank among them: that rank gets no row of it).
      std::vector<char> kept(N * k);
      for (int64_t a = 0; a < N * k; ++a) kept[a] = group[r][a] >= 0 && rng.below(4) != 0;
      count[r].assign(G, 0);
      row[r].assign(N * k, -1);
      std::vector<int64_t> start(G + 1, 0);
      for (int64_t a = 0; a < N * k; ++a)
        if (kept[a]) ++count[r][group[r][a]];
      for (int64_t g = 0; g < G; ++g) start[g + 1] = start[g] + count[r][g];
      std::vector<int64_t> next(start.begin(), start.end() - 1);
      for (int64_t g = 0; g < G; ++g)  // slots by position within each expert
        for (int64_t a = 0; a < N * k; ++a)
          if (kept[a] && group[r][a] == g) row[r][a] = next[g]++;
    }
    auto tag = [](int64_t r, int64_t i) { return static_cast<int32_t>(r * 1000 + i); };
    std::vector<TokenRows> t(W);
    for (int64_t r = 0; r < W; ++r) {
      const int64_t rows = std::accumulate(count[r].begin(), count[r].end(), int64_t{0});
      t[r] = plan_token_rows(group[r], row[r], N, k, W, El, rows);
    }
    for (int64_t d = 0; d < W; ++d) {
      // The counted exchange at rank d.
      std::vector<int64_t> send(count[d].begin(), count[d].end()), recv(G);
      for (int64_t s = 0; s < W; ++s)
        for (int64_t e = 0; e < El; ++e) recv[s * El + e] = count[s][d * El + e];
      const ExchangePlan plan = plan_exchange(send, recv, W, El);
      std::vector<int32_t> received, idx;  // source-major assignment rows: their tags and row indices
      std::vector<int32_t> tokens;         // source-major token rows (tags)
      std::vector<int64_t> recv_tokens(W, 0);
      for (int64_t s = 0; s < W; ++s) {
        std::vector<int32_t> buf(std::accumulate(count[s].begin(), count[s].end(), int64_t{0}));
        for (int64_t a = 0; a < N * k; ++a)
          if (row[s][a] >= 0) buf[row[s][a]] = tag(s, a / k);
        int64_t first = 0;
        for (int64_t g = 0; g < d * El; ++g) first += count[s][g];
        for (int64_t e = 0; e < El; ++e)
          for (int64_t i = 0; i < count[s][d * El + e]; ++i, ++first) {
            received.push_back(buf[first]);
            idx.push_back(t[s].row_in_message[first]);
          }
        std::vector<int32_t> message(t[s].count[d], -1);
        for (int64_t a = 0; a < N * k; ++a)
          if (t[s].group[a] == d) message[t[s].slot[a]] = tag(s, a / k);
        recv_tokens[s] = t[s].count[d];
        tokens.insert(tokens.end(), message.begin(), message.end());
      }
      const ExpertRows e = plan_expert_rows(plan, idx, recv_tokens, k);
      ASSERT_EQ(e.token_rows, static_cast<int64_t>(tokens.size()));
      for (size_t q = 0; q < plan.perm.size(); ++q)
        ASSERT_EQ(tokens[e.index[q]], received[plan.perm[q]]) << "rank " << d << ", expert-major row " << q;
      // The backward's route: token row u's entries are the rows q that read u.
      for (int64_t u = 0; u < e.token_rows; ++u) {
        std::vector<int64_t> want, got;
        for (size_t q = 0; q < e.index.size(); ++q)
          if (e.index[q] == u) want.push_back(static_cast<int64_t>(q));
        for (int64_t j = 0; j < k; ++j)
          if (e.group[u * k + j] >= 0) got.push_back(plan.offsets[e.group[u * k + j]] + e.slot[u * k + j]);
        ASSERT_EQ(got, want) << "rank " << d << ", token row " << u;
      }
    }
  }
}

}  // namespace
}  // namespace sy
