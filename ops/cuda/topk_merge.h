// The gating's one-pass top-k (ops/cuda/routing.cu, gate_topk_regs): each
// of a row's L lanes keeps its own K best picks in order, then log2 L
// butterfly steps merge two lanes' lists, after which every lane holds the
// row's top K. The order is the routing core's (ops/routing.h): score
// descending, group ascending (NaN counted as -inf by the caller), so ties
// go to the lower group. Host and device (ops/cuda/host_device.h): CPU
// tests replay the lanes and the butterfly (tests/topk_merge_test.cc).
#pragma once
#include <climits>
#include <cmath>

#include "ops/cuda/host_device.h"

// Fixed-bound loops over a list unrolled on the device (its places stay in
// registers); a plain loop on the host.
#if defined(__CUDA_ARCH__)
#define SY_TOPK_UNROLL _Pragma("unroll")
#else
#define SY_TOPK_UNROLL
#endif

namespace sy::ops::topk {

struct Pick {
  float s;  // selection score (NaN as -inf)
  int g;    // group within the row; kNone for a lane's empty places
  float p;  // probability (the weight)
};
// A place without a group: below every pick, even one of score -inf.
constexpr int kNone = INT_MAX;
SY_HD inline Pick none() { return {-INFINITY, kNone, 0.f}; }

SY_HD inline bool better(const Pick& a, const Pick& b) { return a.s > b.s || (a.s == b.s && a.g < b.g); }

// a the better of the two after.
SY_HD inline void order2(Pick& a, Pick& b) {
  if (better(b, a)) {
    const Pick t = a;
    a = b, b = t;
  }
}

// x into the ordered list top (x past its end is dropped).
template <int K>
SY_HD inline void insert(Pick (&top)[K], Pick x) {
  SY_TOPK_UNROLL
  for (int r = 0; r < K; ++r) order2(top[r], x);
}

// top becomes the best K of two ordered lists, top and other, in order:
// the better of top_r and other_(K-1-r) for each r is the best K of both
// as a bitonic sequence (one list descending, the other reversed), which a
// bitonic merge puts in order. Groups are distinct across the two lists, so
// the order is total and both lanes of a butterfly pair end with the same
// list (merge(a, b) = merge(b, a)).
template <int K>
SY_HD inline void merge_sorted(Pick (&top)[K], const Pick (&other)[K]) {
  SY_TOPK_UNROLL
  for (int r = 0; r < K; ++r)
    if (better(other[K - 1 - r], top[r])) top[r] = other[K - 1 - r];
  SY_TOPK_UNROLL
  for (int h = K / 2; h > 0; h >>= 1)
    SY_TOPK_UNROLL
    for (int r = 0; r < K; ++r)
      if ((r & h) == 0) order2(top[r], top[r + h]);
}

}  // namespace sy::ops::topk
