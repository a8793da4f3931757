// runtime/scaling_model.h on hand-computed cases.
#include "runtime/scaling_model.h"

#include <gtest/gtest.h>

namespace sy {
namespace {

TEST(LinkSeconds, OneRankSendsNothing) {
  EXPECT_EQ(link_seconds({4, 1e6, 4e6}, 1, {1e-6, 10, 10, 8}), 0.0);
}

TEST(LinkSeconds, InsideANodeByHand) {
  // 2 ranks, alpha 1 us, 10 GB/s: each of 2 exchanges 1 us + 1 MB * 1/2 / 10 GB/s = 51 us;
  // the all-reduce of 4 MB: 2 * 1 us + 2 * 1/2 * 4 MB / 10 GB/s = 402 us.
  EXPECT_NEAR(link_seconds({2, 1e6, 4e6}, 2, {1e-6, 10, 1, 8}), 2 * 51e-6 + 402e-6, 1e-12);
}

TEST(LinkSeconds, ShardedValuesAddAnAllGather) {
  // As InsideANodeByHand, with 4 MB of values all-gathered after a sharded
  // update, 2 MB from each rank, a ring: 1 step of 1 us + 1/2 x 4 MB / 10
  // GB/s = 201 us more; across nodes at the node's link shared by its ranks
  // (16 ranks, 8 a node, alpha 1 us: 15 x 1 us + 15/16 x 4 MB / 0.125 GB/s
  // = 30.015 ms).
  EXPECT_NEAR(link_seconds({2, 1e6, 4e6, 4e6}, 2, {1e-6, 10, 1, 8}), 2 * 51e-6 + 402e-6 + 201e-6, 1e-12);
  EXPECT_NEAR(link_seconds({1, 1e6, 4e6, 4e6}, 16, {1e-6, 100, 1, 8}) -
                  link_seconds({1, 1e6, 4e6, 0}, 16, {1e-6, 100, 1, 8}),
              15e-6 + 30e-3, 1e-12);
}

TEST(LinkSeconds, ReduceScatteredGradientsHalveTheAllReduce) {
  // As ShardedValuesAddAnAllGather at 2 ranks, the dense gradients
  // reduce-scattered: 1 us + 1/2 x 4 MB / 10 GB/s = 201 us where the
  // all-reduce took 402.
  StepTraffic t{2, 1e6, 4e6, 4e6};
  t.scattered = true;
  EXPECT_NEAR(link_seconds(t, 2, {1e-6, 10, 1, 8}), 2 * 51e-6 + 201e-6 + 201e-6, 1e-12);
}

TEST(LinkSeconds, AcrossNodesTheNodeLinkBounds) {
  // 16 ranks, 8 a node: an exchange sends 8 ranks * 1 MB * 8/16 = 4 MB off the
  // node at 1 GB/s (4 ms), over the node's 15/16 MB at 100 GB/s (9.4 us); the
  // all-reduce runs at 1 GB/s / 8: 2 * 15/16 * 4 MB / 0.125 GB/s = 60 ms.
  const double t = link_seconds({1, 1e6, 4e6}, 16, {0, 100, 1, 8});
  EXPECT_NEAR(t, 4e-3 + 60e-3, 1e-12);
}

TEST(LoadExcess, ByHand) {
  // 4 experts kept 0.4, 0.2, 0.2, 0.2: 2 ranks hold 0.6 and 0.4 (2 * 0.6 - 1);
  // 4 ranks 0.4 of 1.0 (4 * 0.4 - 1); 3 ranks cannot split 4 experts, so 2
  // groups; 8 ranks, 4.
  const KeptShares kept = {{{0.4, 0.2, 0.2, 0.2}}};
  EXPECT_NEAR(load_excess(kept, 1), 0.0, 1e-15);
  EXPECT_NEAR(load_excess(kept, 2), 0.2, 1e-15);
  EXPECT_NEAR(load_excess(kept, 3), 0.2, 1e-15);
  EXPECT_NEAR(load_excess(kept, 4), 0.6, 1e-15);
  EXPECT_NEAR(load_excess(kept, 8), 0.6, 1e-15);
}

TEST(LoadExcess, MeanOverStepsAndLayersOfEachOnesMaximum) {
  // Step 1: layer 0 even, layer 1 all on expert 3 (2 ranks: 2 * 1 - 1 = 1).
  // Step 2: one layer, ranks 0.3 + 0.2 and 0.1 + 0.1 (dropped rows: the
  // kept shares sum to 0.7): 2 * 0.5 / 0.7 - 1. The mean of the three.
  const KeptShares kept = {{{0.25, 0.25, 0.25, 0.25}, {0, 0, 0, 1}}, {{0.3, 0.2, 0.1, 0.1}}};
  EXPECT_NEAR(load_excess(kept, 2), (0 + 1 + (2 * 0.5 / 0.7 - 1)) / 3, 1e-15);
}

TEST(LoadExcess, NothingRoutedIsNoImbalance) {
  EXPECT_EQ(load_excess({}, 4), 0.0);
  EXPECT_EQ(load_excess({{{0, 0, 0, 0}}}, 4), 0.0);
}

}  // namespace
}  // namespace sy
