// runtime/route_analysis.h on hand-computed tables: independence gives 0,
// a choice the id decides gives 1, a half-decided one ln 2 / ln 4 = 0.5 of
// the entropy; the Miller-Madow term; each layer figure on a small sample.
#include "runtime/route_analysis.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "core/rng.h"

namespace sy {
namespace {

TEST(Contingency, IndependentIsZeroDecidedIsOne) {
  // x in {0, 1}, e in {0, 1}: every pair equally often - I = 0, H(E) = ln 2.
  Contingency ind(2, 2);
  for (int x = 0; x < 2; ++x)
    for (int e = 0; e < 2; ++e)
      for (int n = 0; n < 50; ++n) ind.add(x, e);
  EXPECT_NEAR(ind.entropy_e(), std::log(2.0), 1e-12);
  EXPECT_NEAR(ind.mutual_information(), 0.0, 1e-12);
  // K_xe 4, K_x 2, K_e 2: (4 - 2 - 2 + 1) / (2 x 200).
  EXPECT_DOUBLE_EQ(ind.miller_madow_bias(), 1.0 / 400);
  EXPECT_EQ(ind.uncertainty_coefficient(), 0.0);  // clamped: I - bias < 0
  // e = x: I = H(E) = ln 2; bias (2 - 2 - 2 + 1) / 200 < 0 would lift it past 1: clamped.
  Contingency dec(2, 2);
  for (int n = 0; n < 100; ++n) dec.add(n % 2, n % 2);
  EXPECT_NEAR(dec.mutual_information(), std::log(2.0), 1e-12);
  EXPECT_EQ(dec.uncertainty_coefficient(), 1.0);
}

// Four experts equally often; x in {0, 1} picks the half {0, 1} or {2, 3}
// and the expert within the half is even: I = ln 2 of H(E) = ln 4.
TEST(Contingency, HalfDecidedIsAHalf) {
  Contingency c(2, 4);
  for (int n = 0; n < 400; ++n) {
    const int x = n % 2, e = 2 * x + (n / 2) % 2;
    c.add(x, e);
  }
  EXPECT_NEAR(c.entropy_e(), std::log(4.0), 1e-12);
  EXPECT_NEAR(c.mutual_information(), std::log(2.0), 1e-12);
  // K_xe 4, K_x 2, K_e 4: bias (4 - 2 - 4 + 1) / 800 < 0 adds a little.
  EXPECT_DOUBLE_EQ(c.miller_madow_bias(), -1.0 / 800);
  EXPECT_NEAR(c.uncertainty_coefficient(), (std::log(2.0) + 1.0 / 800) / std::log(4.0), 1e-12);
  EXPECT_THROW(c.add(2, 0), Error);
  EXPECT_THROW(c.add(0, -1), Error);
}

// Random choices that ignore the id: the plug-in estimate is above zero by
// about its bias, the corrected one near zero.
TEST(Contingency, MillerMadowRemovesTheSmallSampleBias) {
  Rng rng(3);
  Contingency c(64, 8);
  for (int n = 0; n < 4000; ++n) c.add(rng.below(64), rng.below(8));
  const double mi = c.mutual_information(), bias = c.miller_madow_bias();
  EXPECT_GT(mi, 0.5 * bias);
  EXPECT_LT(std::fabs(mi - bias), 0.3 * bias) << "plug-in " << mi << ", expected bias " << bias;
  EXPECT_LT(c.uncertainty_coefficient(), 0.01);
}

// A layer over 8 tokens of 2 sequences of 4: ids 0 1 2 3 | 1 0 3 2,
// expert = id mod 2 (the id decides it; positions 0..3, buckets 0, 2, 4,
// 6, each hold both experts once: position explains nothing), token 7
// unserved, token 3's first choice dropped but another choice kept. The
// previous layer's choices 2 2 2 2 | 0 1 0 1 leave half the entropy
// (I = ln 2 / 2, no Miller-Madow term); the compared run's differ on
// tokens 6 and 7.
TEST(AnalyseLayer, FiguresOnAHandSample) {
  RoutingSample s{{0, 1, 2, 3, 1, 0, 3, 2}, {0, 1, 2, 3, 0, 1, 2, 3}, 4, 4};
  const std::vector<int32_t> first = {0, 1, 0, 1, 1, 0, 1, 0};
  const std::vector<uint8_t> served = {1, 1, 1, 1, 1, 1, 1, 0};
  const std::vector<uint8_t> first_kept = {1, 1, 1, 0, 1, 1, 1, 0};
  const std::vector<int32_t> previous = {2, 2, 2, 2, 0, 1, 0, 1};  // of 3 experts
  const std::vector<int32_t> compared = {0, 1, 0, 1, 1, 0, 0, 1};  // 2 of 8 differ
  const LayerRouting r = analyse_layer(s, 2, first, first_kept, served, previous, 3, compared, 2);
  EXPECT_EQ(r.tokens, 8);
  EXPECT_DOUBLE_EQ(r.served, 7.0 / 8);
  EXPECT_EQ(r.by_id, 1.0);
  EXPECT_EQ(r.by_position, 0.0);
  EXPECT_NEAR(r.by_previous, 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(r.changed, 2.0 / 8);
  ASSERT_EQ(r.experts.size(), 2u);
  EXPECT_DOUBLE_EQ(r.experts[0].share, 0.5);
  EXPECT_DOUBLE_EQ(r.experts[0].kept, 3.0 / 4);  // token 7
  EXPECT_DOUBLE_EQ(r.experts[1].kept, 3.0 / 4);  // token 3: served, but not by its first choice
  // Expert 0 gets ids 0 and 2 twice each: ties to the lower id.
  ASSERT_EQ(r.experts[0].top_ids.size(), 2u);
  EXPECT_EQ(r.experts[0].top_ids[0], (std::pair<int32_t, double>{0, 0.5}));
  EXPECT_EQ(r.experts[0].top_ids[1], (std::pair<int32_t, double>{2, 0.5}));
  // The same choices relabelled (experts 0 and 1 swapped): every choice
  // changed, the same partition.
  std::vector<int32_t> swapped = first;
  for (int32_t& e : swapped) e = 1 - e;
  const LayerRouting sw = analyse_layer(s, 2, first, first_kept, served, {}, 0, swapped, 2);
  EXPECT_EQ(sw.changed, 1.0);
  EXPECT_EQ(sw.by_compared, 1.0);
  // 2 of 8 moved: cells 3, 1 | 1, 3 of 8; I = 3/4 ln 1.5 + 1/4 ln 0.5, Miller-Madow 1/16.
  EXPECT_NEAR(r.by_compared, (0.75 * std::log(1.5) + 0.25 * std::log(0.5) - 1.0 / 16) / std::log(2.0), 1e-12);
  // Without a previous layer or a compared run: -1.
  const LayerRouting alone = analyse_layer(s, 2, first, first_kept, served, {}, 0, {}, 1);
  EXPECT_EQ(alone.by_previous, -1.0);
  EXPECT_EQ(alone.changed, -1.0);
  EXPECT_EQ(alone.by_compared, -1.0);
  EXPECT_EQ(alone.experts[1].top_ids.size(), 1u);
  EXPECT_THROW(analyse_layer(s, 2, {0, 1}, first_kept, served, {}, 0, {}, 1), Error);
  RoutingSample no_len = s;
  no_len.seq_len = 0;
  EXPECT_THROW(analyse_layer(no_len, 2, first, first_kept, served, {}, 0, {}, 1), Error);
}

// A depth-routed block over 40 tokens: id 0 always processed, ids 1 and 3
// never, id 2 every other time (10 of each id; positions cycle 0..3 of T
// 4, nearly independent of the decision); compared with a run that differs
// on two tokens. min_count 10 lists all four ids, 11 none.
TEST(AnalyseDepth, FiguresOnAHandSample) {
  RoutingSample s;
  s.vocab = 4, s.seq_len = 4;
  std::vector<uint8_t> processed, compared;
  for (int n = 0; n < 30; ++n) {
    const int id = n % 3;
    s.ids.push_back(id);
    s.position.push_back(n % 4);
    processed.push_back(id == 0 || (id == 2 && (n / 3) % 2 == 0));
  }
  for (int n = 30; n < 40; ++n) s.ids.push_back(3), s.position.push_back(n % 4), processed.push_back(0);
  compared = processed;
  compared[0] ^= 1, compared[1] ^= 1;
  const DepthRouting d = analyse_depth(s, processed, compared, 2, 10);
  EXPECT_EQ(d.tokens, 40);
  EXPECT_DOUBLE_EQ(d.processed, 15.0 / 40);
  EXPECT_GT(d.by_id, 0.5);
  EXPECT_LT(d.by_position, 0.05);
  EXPECT_DOUBLE_EQ(d.changed, 2.0 / 40);
  ASSERT_EQ(d.most_processed.size(), 2u);
  EXPECT_EQ(d.most_processed[0], (std::pair<int32_t, double>{0, 1.0}));
  EXPECT_EQ(d.most_processed[1], (std::pair<int32_t, double>{2, 0.5}));
  ASSERT_EQ(d.most_passed.size(), 2u);
  EXPECT_EQ(d.most_passed[0], (std::pair<int32_t, double>{1, 0.0}));  // ties to the lower id
  EXPECT_EQ(d.most_passed[1], (std::pair<int32_t, double>{3, 0.0}));
  EXPECT_TRUE(analyse_depth(s, processed, {}, 2, 11).most_processed.empty());
  EXPECT_EQ(analyse_depth(s, processed, {}, 2, 10).changed, -1.0);
  EXPECT_THROW(analyse_depth(s, {1, 0}, {}, 2, 10), Error);
}

}  // namespace
}  // namespace sy
