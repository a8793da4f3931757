// groups_choose on CUDA (ops/routing.h) by a radix select per column instead
// of a sort: column c = (segment, group g) of the scores (N, G) keeps its
// `per` best items of the segment (descending score, ties to the lower
// item, -0 == +0: the CPU's partial_sort), slots in item order.
//
// Keys: key_of(x) ascends as x descends (common.cuh's ordered_bits, inverted),
// so a column keeps its `per` smallest keys, ties to the lower item. With
// tau the per-th smallest key of the column, it keeps every key < tau and
// the first `need` keys == tau in item order, need = per - #(key < tau).
// Work comes in units (segment, tile of items, group g), numbered with g
// fastest (Shape::at): a thread walks its unit's column through the tile in
// item order, so the threads of a warp read adjacent groups of a row (one
// coalesced read where G >= 32) or, for few groups, adjacent tiles.
//   1. tau by 4 passes of 8 bits, most significant first. Pass p: each
//      unit's histogram of digit p over its keys whose top 8p bits equal
//      tau's so far, in the thread's own 16-bit bins (no atomics; a tile
//      holds at most 65535 items); the units' bins added per column in tile
//      order (R); then one warp a column finds the bin where the running
//      count reaches `need`: digit p (need minus the keys below it is the
//      new need).
//   2. per unit: the keys < tau and == tau.
//   3. per unit, items in order: kept where key < tau, or key == tau while
//      fewer than `need` equal keys of earlier items were met (the earlier
//      tiles' counts from 2 start both runs); a kept item's slot is the
//      number of kept items before it (plus seg * per for shared groups, as
//      the sort path's run).
// Integer counts only: the choice, weights and slots are exact and the same
// on every run. Traffic: 6 reads of the scores and per pass the units'
// bins (512 bytes a unit) written and read once, where the sort path wrote
// and read a 12-byte (key, value) pair per score 6 times and read the scores
// column-wise. (Routed attention's balanced mode at 64k tokens x 8 heads and
// 256 clusters spent 23.8 ms in that sort on an H200.)
//
// Plain functions of one unit, one (bin, column) or one column, for the
// kernels in ops/cuda/routing.cu and the host replay in
// tests/column_select_test.cc.
#pragma once
#include <cstdint>

#include "ops/cuda/host_device.h"  // SY_HD, ordered_bits

namespace sy::ops::colsel {

constexpr int kPasses = 4, kBins = 256;  // digits of 8 bits

// The ascending key of a score (descending scores; -0 and +0 one key; NaN
// that of -inf).
SY_HD inline uint32_t key_of(float x) { return ~ordered_bits(nan_last(x)); }

struct Shape {
  int64_t G;         // groups: columns of the scores
  int64_t S;         // items of a segment (N when there are no segments)
  int64_t segments;  // N / S
  int64_t per;       // items a column keeps: min(capacity, S)
  int64_t tile;      // items of a tile
  int64_t tiles;     // tiles of a segment: ceil(S / tile)
  bool own;          // each segment its own groups (group seg G + g)
  SY_HD int64_t columns() const { return segments * G; }
  SY_HD int64_t units() const { return segments * tiles * G; }
  SY_HD int64_t first(int64_t seg, int64_t t) const { return seg * S + t * tile; }
  SY_HD int64_t end(int64_t seg, int64_t t) const { return seg * S + (S < (t + 1) * tile ? S : (t + 1) * tile); }
  // Unit (segment, tile, g)'s number, and its index in the per-unit arrays
  // (counts, bins): g fastest.
  SY_HD int64_t at(int64_t seg, int64_t t, int64_t g) const { return (seg * tiles + t) * G + g; }
};

// Unit u's segment, tile and group.
struct Unit {
  int64_t seg, t, g;
};
SY_HD inline Unit unit_of(const Shape& s, int64_t u) { return {u / (s.G * s.tiles), u / s.G % s.tiles, u % s.G}; }

// Items of a tile: enough units to keep a GPU's loads in flight (about
// 32768 threads) where there are that many scores, at least 64 items (the
// bins a unit writes each pass, 512 bytes, against its walk), at most 65535
// (the 16-bit bins) and the segment.
inline int64_t tile_items(int64_t N, int64_t G, int64_t S) {
  int64_t tile = (N * G + 32767) / 32768;
  tile = tile < 64 ? 64 : (tile > 65535 ? 65535 : tile);
  return tile < S ? tile : (S > 0 ? S : 1);
}

// What a column knows of tau: its top bits found so far (prefix), and how
// many keys matching them it still takes (need; 0: the column keeps none).
struct Column {
  uint32_t prefix;
  int32_t need;
};

// A lane's walk loads kBatch scores of its column before it uses any: the
// bins (shared memory) and outputs it writes could alias the scores for
// all the compiler knows, so a load per item after the last store would
// leave one load in flight a lane (a warp's 128 bytes a memory latency).
constexpr int kBatch = 16;

// Scores of items [i, i + n) of column g, n <= kBatch (the rest 0).
SY_HD inline void load_batch(const float* scores, int64_t G, int64_t g, int64_t i, int64_t n, float (&x)[kBatch]) {
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int j = 0; j < kBatch; ++j) x[j] = j < n ? scores[(i + j) * G + g] : 0.f;
}

// f(i, x) for every item i of tile t in order, x the score of column g.
template <class F>
SY_HD inline void walk_tile(const float* scores, const Shape& s, int64_t seg, int64_t t, int64_t g, F&& f) {
  for (int64_t i = s.first(seg, t), e = s.end(seg, t); i < e; i += kBatch) {
    const int64_t n = e - i < kBatch ? e - i : kBatch;
    float x[kBatch];
    load_batch(scores, s.G, g, i, n, x);
    for (int j = 0; j < n; ++j) f(i + j, x[j]);
  }
}

// Whether key k matches tau's top 8 p bits (pass p; every key at pass 0).
SY_HD inline bool matches(uint32_t k, uint32_t prefix, int pass) {
  return pass == 0 || (k >> (32 - 8 * pass)) == (prefix >> (32 - 8 * pass));
}

// Pass p's histogram of column (seg, g) over tile t: hist[b * stride] += the
// keys matching the prefix whose digit p is b (bins zeroed by the caller;
// stride: a warp's threads interleave their bins; Count: 16 bits on the
// device, a tile's count fits).
template <class Count>
SY_HD inline void tile_histogram(const float* scores, const Shape& s, int64_t seg, int64_t t, int64_t g, int pass,
                                 Column col, Count* hist, int stride) {
  if (col.need <= 0) return;
  const int shift = 24 - 8 * pass;
  walk_tile(scores, s, seg, t, g, [&](int64_t, float x) {
    const uint32_t k = key_of(x);
    if (matches(k, col.prefix, pass)) ++hist[((k >> shift) & 0xffu) * stride];
  });
}

// Column (seg, g)'s count of bin b over its segment's tiles, in tile order
// (R[b * columns + seg * G + g]): H holds pass p's bins, bin b of unit u at
// b * units + u.
SY_HD inline uint32_t bin_total(const uint16_t* H, const Shape& s, int64_t seg, int64_t g, int b) {
  uint32_t n = 0;
  for (int64_t t = 0; t < s.tiles; ++t) n += H[b * s.units() + s.at(seg, t, g)];
  return n;
}

// Pass p's digit from bins [b0, b0 + n) of the column with `below` keys in
// the bins before b0: the column with the digit set and its new need where
// the running count reaches need in this range (true), else unchanged.
// (A range whose `below` already reaches need lies past the digit: false,
// so of a warp's lanes exactly one settles.)
SY_HD inline bool settle_digit(Column& col, const uint32_t* counts, int b0, int n, uint32_t below, int pass) {
  if (col.need <= 0 || below >= static_cast<uint32_t>(col.need)) return false;
  for (int j = 0; j < n; ++j) {
    if (below + counts[j] >= static_cast<uint32_t>(col.need)) {
      col.prefix |= static_cast<uint32_t>(b0 + j) << (24 - 8 * pass);
      col.need -= static_cast<int32_t>(below);
      return true;
    }
    below += counts[j];
  }
  return false;
}

// Keys of column (seg, g) in tile t below tau and equal to it.
SY_HD inline void tile_counts(const float* scores, const Shape& s, int64_t seg, int64_t t, int64_t g, uint32_t tau,
                              uint32_t& less, uint32_t& equal) {
  uint32_t lt = 0, eq = 0;
  walk_tile(scores, s, seg, t, g, [&](int64_t, float x) {
    const uint32_t k = key_of(x);
    lt += k < tau;
    eq += k == tau;
  });
  less = lt, equal = eq;
}

// Column (seg, g) over tile t, items in order: the route's group, weight and
// slot of each assignment a = i G + g (group and weight left as they are -
// -1 and 0 - where not kept; slot -1). less and equal: the per-tile counts
// of step 2 (at(seg, t, g)).
SY_HD inline void tile_mark(const float* scores, const Shape& s, int64_t seg, int64_t t, int64_t g, Column col,
                            const uint32_t* less, const uint32_t* equal, int32_t* group, float* weight,
                            int32_t* slot) {
  uint32_t less_before = 0, equal_before = 0;
  for (int64_t u = 0; u < t; ++u) less_before += less[s.at(seg, u, g)], equal_before += equal[s.at(seg, u, g)];
  const uint32_t need = col.need > 0 ? static_cast<uint32_t>(col.need) : 0u;
  uint32_t kept = less_before + (equal_before < need ? equal_before : need), eq = equal_before;
  const int64_t base = s.own ? 0 : seg * s.per;
  const int32_t grp = static_cast<int32_t>(s.own ? seg * s.G + g : g);
  walk_tile(scores, s, seg, t, g, [&](int64_t i, float x) {
    const int64_t a = i * s.G + g;
    const uint32_t k = key_of(x);
    const bool keep = need > 0 && (k < col.prefix || (k == col.prefix && eq < need));
    eq += k == col.prefix;
    if (keep) {
      group[a] = grp;
      weight[a] = x;
      slot[a] = static_cast<int32_t>(base + kept++);
    } else {
      slot[a] = -1;
    }
  });
}

}  // namespace sy::ops::colsel
