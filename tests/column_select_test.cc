// groups_choose's CUDA steps without a GPU: the radix select of
// ops/cuda/column_select.h replayed on the host - each (tile, column) and
// each column in turn, the digit's warp as its 32 lanes one after another -
// against the CPU reference (ops::groups_choose: a partial sort per column,
// ties to the lower item), on random scores and on scores with many ties
// (-0 and +0 among them), capacities of 0, 1, some, all and more than a
// segment, segments with shared and own groups, and tiles from one item to
// the whole segment (ties across tile edges) and the one the GPU takes. What this leaves to the GPU
// tests (backend_ops_test's groups_choose cases): the launches and loads.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "ops/cuda/column_select.h"
#include "ops/routing.h"

namespace sy {
namespace {

namespace colsel = ops::colsel;

struct Replayed {
  std::vector<int32_t> group, slot;
  std::vector<float> weight;
};

Replayed replay(const std::vector<float>& scores, int64_t N, int64_t G, int64_t capacity, int64_t segment, bool own,
                int64_t tile) {
  const int64_t S = segment > 0 ? segment : N;
  const int64_t segments = N / S, per = std::min(capacity, S);
  const colsel::Shape s{G, S, segments, per, tile, (S + tile - 1) / tile, own && segment > 0};
  const int64_t units = s.units(), C = s.columns();
  std::vector<colsel::Column> cols(C, colsel::Column{0u, static_cast<int32_t>(per)});
  std::vector<uint16_t> H(colsel::kBins * units), bins(colsel::kBins);
  std::vector<uint32_t> R(colsel::kBins * C);
  for (int pass = 0; pass < colsel::kPasses; ++pass) {
    for (int64_t u = 0; u < units; ++u) {  // the units in any order: each writes its own bins
      const colsel::Unit w = colsel::unit_of(s, u);
      EXPECT_EQ(s.at(w.seg, w.t, w.g), u);
      std::fill(bins.begin(), bins.end(), uint16_t{0});
      colsel::tile_histogram(scores.data(), s, w.seg, w.t, w.g, pass, cols[w.seg * G + w.g], bins.data(), 1);
      for (int b = 0; b < colsel::kBins; ++b) H[b * units + u] = bins[b];
    }
    for (int b = 0; b < colsel::kBins; ++b)
      for (int64_t c = 0; c < C; ++c) R[b * C + c] = colsel::bin_total(H.data(), s, c / G, c % G, b);
    for (int64_t c = 0; c < C; ++c) {  // the digit's warp: its 32 lanes in turn
      constexpr int kPer = colsel::kBins / 32;
      const colsel::Column before = cols[c];
      uint32_t below = 0;
      int settled = 0;
      for (int lane = 0; lane < 32; ++lane) {
        uint32_t counts[kPer], sum = 0;
        for (int j = 0; j < kPer; ++j) sum += counts[j] = R[(lane * kPer + j) * C + c];
        colsel::Column col = before;  // every lane reads the column before one writes it
        if (colsel::settle_digit(col, counts, lane * kPer, kPer, below, pass)) cols[c] = col, ++settled;
        below += sum;
      }
      EXPECT_EQ(settled, before.need > 0 ? 1 : 0) << "lanes settling column " << c << " at pass " << pass;
    }
  }
  std::vector<uint32_t> less(units), equal(units);
  for (int64_t u = 0; u < units; ++u) {
    const colsel::Unit w = colsel::unit_of(s, u);
    colsel::tile_counts(scores.data(), s, w.seg, w.t, w.g, cols[w.seg * G + w.g].prefix, less[u], equal[u]);
  }
  Replayed r{std::vector<int32_t>(N * G, -1), std::vector<int32_t>(N * G, -7), std::vector<float>(N * G, 0.f)};
  for (int64_t u = 0; u < units; ++u) {
    const colsel::Unit w = colsel::unit_of(s, u);
    colsel::tile_mark(scores.data(), s, w.seg, w.t, w.g, cols[w.seg * G + w.g], less.data(), equal.data(),
                      r.group.data(), r.weight.data(), r.slot.data());
  }
  return r;
}

void expect_matches_cpu(const std::vector<float>& scores, int64_t N, int64_t G, int64_t capacity, int64_t segment,
                        bool own, const std::string& what) {
  Ctx& host = host_ctx();
  ops::Route want;
  ops::groups_choose(host, want, Tensor::from_host(scores, {N, G}), capacity, segment, own);
  const std::vector<int32_t> group = want.group.to_vector<int32_t>(), slot = want.slot.to_vector<int32_t>();
  const std::vector<float> weight = want.weight.to_vector<float>();
  const int64_t S = segment > 0 ? segment : N;
  for (const int64_t tile : {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{64}, S, colsel::tile_items(N, G, S)}) {
    SCOPED_TRACE(what + ", tile " + std::to_string(tile));
    const Replayed got = replay(scores, N, G, capacity, segment, own, tile);
    int wrong = 0;
    for (int64_t a = 0; a < N * G; ++a)
      if (got.group[a] != group[a] || got.slot[a] != slot[a] || got.weight[a] != weight[a]) {
        if (++wrong <= 3)
          ADD_FAILURE() << "assignment " << a << " (item " << a / G << ", group " << a % G << "): group "
                        << got.group[a] << " slot " << got.slot[a] << " weight " << got.weight[a] << ", want "
                        << group[a] << " " << slot[a] << " " << weight[a];
      }
    EXPECT_EQ(wrong, 0);
  }
}

struct Spec {
  int64_t N, G, capacity, segment;
  bool own;
};
const Spec kSpecs[] = {{37, 4, 9, 0, false},  {24, 3, 5, 8, false},  {64, 1, 3, 16, false}, {12, 2, 20, 6, false},
                       {40, 3, 4, 10, true},  {12, 2, 20, 6, true},  {50, 5, 0, 0, false},  {50, 5, 1, 0, false},
                       {50, 5, 50, 0, false}, {90, 33, 7, 30, true}, {90, 33, 7, 45, false}};

std::string name_of(const Spec& s) {
  return std::to_string(s.N) + "x" + std::to_string(s.G) + " capacity " + std::to_string(s.capacity) +
         " segment " + std::to_string(s.segment) + (s.own ? " own" : "");
}

TEST(ColumnSelect, MatchesTheCpuOnRandomScores) {
  Rng rng(31);
  for (const Spec& s : kSpecs) {
    std::vector<float> scores(s.N * s.G);
    for (float& x : scores) x = static_cast<float>(rng.normal());
    expect_matches_cpu(scores, s.N, s.G, s.capacity, s.segment, s.own, name_of(s));
  }
}

// Five values only (-0 and +0 equal): most of a column ties at tau, across
// tiles, and the lower items must win.
TEST(ColumnSelect, MatchesTheCpuOnTies) {
  Rng rng(32);
  const float values[] = {-1.f, -0.f, 0.f, 0.5f, 1.f};
  for (const Spec& s : kSpecs) {
    std::vector<float> scores(s.N * s.G);
    for (float& x : scores) x = values[rng.next_u64() % 5];
    expect_matches_cpu(scores, s.N, s.G, s.capacity, s.segment, s.own, name_of(s) + ", ties");
  }
}

// The GPU's tiles: at most 65535 items (the 16-bit bins) and the segment,
// at least one; about 32768 units once there are that many scores (64k
// tokens x 8 heads x 256 clusters: tiles of 4096, 2^15 units).
TEST(ColumnSelect, TilesFitTheBinsAndTheSegment) {
  struct C { int64_t N, G, S; };
  for (const C c : {C{37, 4, 37}, C{2048, 1, 256}, C{65536, 64, 65536}, C{524288, 256, 65536},
                    C{int64_t{1} << 30, 64, int64_t{1} << 30}, C{100, 1, 1}}) {
    const int64_t t = colsel::tile_items(c.N, c.G, c.S);
    EXPECT_GE(t, 1);
    EXPECT_LE(t, 65535);
    EXPECT_LE(t, c.S);
  }
  const int64_t t = colsel::tile_items(524288, 256, 65536);
  EXPECT_EQ(t, 4096);
  EXPECT_EQ(524288 / 65536 * (65536 / t) * 256, 32768);
}

// The keys ascend as the scores descend, -0 and +0 one key, across signs
// and magnitudes (the select's whole order rests on it).
TEST(ColumnSelect, KeysAscendAsScoresDescend) {
  const float xs[] = {3e38f, 1.f, 1e-30f, 1e-45f, 0.f, -1e-45f, -1e-30f, -1.f, -3e38f};
  for (size_t i = 0; i + 1 < sizeof xs / sizeof xs[0]; ++i)
    EXPECT_LT(colsel::key_of(xs[i]), colsel::key_of(xs[i + 1])) << xs[i] << " then " << xs[i + 1];
  EXPECT_EQ(colsel::key_of(0.f), colsel::key_of(-0.f));
  // NaN, either sign, ranks with -inf (last): the CPU's nan_last.
  EXPECT_EQ(colsel::key_of(std::nanf("")), colsel::key_of(-INFINITY));
  EXPECT_EQ(colsel::key_of(-std::nanf("")), colsel::key_of(-INFINITY));
}

}  // namespace
}  // namespace sy
