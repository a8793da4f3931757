// The expert exchange's plan is a pure host function: rows per peer and the
// permutation from received (source-major) to expert-major rows, checked on
// a hand-worked case and on random counts against a direct construction.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace sy
