// The gating's one-pass top-k (ops/cuda/topk_merge.h) without a GPU: a
// row's L lanes, each holding NV adjacent groups, keep their own K best,
// then the xor butterfly of gate_topk_regs (ops/cuda/routing.cu) merges
// them, replayed here lane by lane. Every lane must end with the row's top
// K in the routing core's order (score descending, group ascending; NaN as
// -inf), which a plain sort gives: normal scores, ties (whole numbers, so
// equal scores within a lane and across lanes), and rows with NaN, -inf and
// +inf; every layout the kernels launch (L 8 and 16, NV 1 to 8, groups past
// G empty) and K 1 to 8.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/topk_merge.h"

namespace sy::ops::topk {
namespace {

// The row's order by a sort: indices of s (NaN as -inf), best first.
std::vector<int> sorted_groups(const std::vector<float>& s) {
  std::vector<int> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto key = [&](int g) { return std::isnan(s[g]) ? -INFINITY : s[g]; };
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return key(a) > key(b); });
  return idx;
}

// Each lane's list after the butterfly (the GPU's lanes, one after another).
template <int K>
std::vector<std::vector<Pick>> replay(const std::vector<float>& s, const std::vector<float>& p, int L, int NV) {
  const int G = static_cast<int>(s.size());
  std::vector<std::vector<Pick>> lanes(L);
  std::vector<std::array<Pick, K>> top(L);
  for (int l = 0; l < L; ++l) {
    Pick t[K];
    for (Pick& x : t) x = none();
    for (int j = 0; j < NV; ++j) {
      const int g = l * NV + j;
      if (g >= G) continue;
      insert<K>(t, Pick{std::isnan(s[g]) ? -INFINITY : s[g], g, p[g]});
    }
    std::copy(t, t + K, top[l].begin());
  }
  for (int o = L / 2; o > 0; o >>= 1) {
    const std::vector<std::array<Pick, K>> before = top;  // a step's shuffles read the lists before it
    for (int l = 0; l < L; ++l) {
      Pick t[K], other[K];
      std::copy(before[l].begin(), before[l].end(), t);
      std::copy(before[l ^ o].begin(), before[l ^ o].end(), other);
      merge_sorted<K>(t, other);
      std::copy(t, t + K, top[l].begin());
    }
  }
  for (int l = 0; l < L; ++l) lanes[l].assign(top[l].begin(), top[l].end());
  return lanes;
}

template <int K>
void check_rows(Rng& rng, int L, int NV, int G, const std::string& kind) {
  for (int row = 0; row < 40; ++row) {
    std::vector<float> s(G), p(G);
    for (int g = 0; g < G; ++g) {
      s[g] = static_cast<float>(rng.normal());
      if (kind == "ties") s[g] = static_cast<float>(static_cast<int>(rng.below(4)));
      if (kind == "special") {
        const uint64_t u = rng.below(8);
        s[g] = u == 0 ? NAN : u == 1 ? -INFINITY : u == 2 ? INFINITY : u == 3 ? 0.f : s[g];
      }
      p[g] = static_cast<float>(g) + 0.5f;  // names its group: a pick carries its own p
    }
    const std::vector<int> want = sorted_groups(s);
    const auto lanes = replay<K>(s, p, L, NV);
    for (int l = 0; l < L; ++l)
      for (int r = 0; r < K; ++r) {
        const Pick& got = lanes[l][r];
        const std::string where = kind + " L " + std::to_string(L) + " NV " + std::to_string(NV) + " G " +
                                  std::to_string(G) + " K " + std::to_string(K) + " row " + std::to_string(row) +
                                  " lane " + std::to_string(l) + " place " + std::to_string(r);
        if (r < G) {
          ASSERT_EQ(got.g, want[r]) << where;
          ASSERT_EQ(got.p, p[want[r]]) << where;
        } else {
          ASSERT_EQ(got.g, kNone) << where;  // fewer groups than places: the rest stay empty
        }
      }
  }
}

TEST(TopkMerge, EveryLaneEndsWithTheRowsTopKInTheRoutingOrder) {
  Rng rng(11);
  for (const std::string kind : {"normal", "ties", "special"})
    for (const int L : {8, 16})
      for (const int NV : {1, 2, 4, 8})
        for (const int G : {1, 3, 8, 24, 40, 64, 70, 100, 128}) {
          if (G > L * NV || (L == 16 && NV != 8)) continue;  // the kernels' layouts (router_rows.cuh)
          check_rows<1>(rng, L, NV, G, kind);
          check_rows<2>(rng, L, NV, G, kind);
          check_rows<4>(rng, L, NV, G, kind);
          check_rows<8>(rng, L, NV, G, kind);
        }
}

}  // namespace
}  // namespace sy::ops::topk
