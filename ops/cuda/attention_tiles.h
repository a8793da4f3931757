// Which pairs the attention kernels (ops/cuda/attention_kernels.cuh) visit, as plain
// functions of indices that run on the host and the device: the masks (which
// (query, key) pairs of a sequence are allowed), the tiles a block loops
// over, the tiles a warp's rows skip, and the tiles that need the element
// mask. The kernels call nothing else to decide what to skip, so
// tests/attention_tiles_test.cc can enumerate every pair of small sequences
// with the kernels' tile sizes and check that each allowed pair is computed
// exactly once and no other pair is - without a GPU.
//
// A mask answers, by index within a sequence:
//   ok(q, k)                     the pair is allowed
//   kv_begin(q_first), kv_end(q_last)
//                                queries in [q_first, q_last] see keys in
//                                [kv_begin, kv_end) only
//   q_begin(k_first), q_end(k_last)
//                                keys in [k_first, k_last] are seen by
//                                queries in [q_begin, q_end) only
//   tile_full(q_first, q_last, k_first, k_last)
//                                every pair of the tile is allowed
//   keys_of(q), queries_of(k)    the pairs of one row as one range of the
//                                other side (a Span), where the mask is that
//                                simple (exact), else ok() decides each pair
// and bind(b, row0, len), which ties a mask to the segment it is used on
// (variable-length segment b, starting at packed row row0, of len rows).
#pragma once
#include <climits>
#include <cstdint>

#include "ops/cuda/host_device.h"  // SY_HD

namespace sy::ops::attn {

SY_HD inline int imin(int a, int b) { return a < b ? a : b; }
SY_HD inline int imax(int a, int b) { return a > b ? a : b; }

// The allowed pairs of one row, a query's keys or a key's queries, as the
// range [lo, hi) of the other side's indices, where that range is the whole
// rule (exact); a mask whose rows are not one range (flags to read pair by
// pair) gives exact = false. The kernels take their rows' spans once per
// tile and test each pair of a tile that needs the element mask by one
// unsigned compare (row_ok below): for routed attention's causal packing,
// where almost every tile needs it, ok() read four ints a pair (two flags,
// two positions) and the span is one binary search a row.
struct Span {
  int lo = 0, hi = 0;  // hi >= lo
  bool exact = false;
  SY_HD bool has(int i) const { return static_cast<unsigned>(i - lo) < static_cast<unsigned>(hi - lo); }
};
SY_HD inline Span span(int lo, int hi) { return {lo, imax(lo, hi), true}; }

// Whether pair (q, k) is allowed, s the span of the kernel's own row: a
// query's (keys_of(q), forward and dQ) unless keys own the rows
// (queries_of(k), dK/dV).
template <class Mask>
SY_HD bool row_ok(const Mask& m, const Span& s, bool keys_own, int q, int k) {
  return s.exact ? s.has(keys_own ? q : k) : m.ok(q, k);
}

// The span of a kernel's own row: a query's keys, or (keys_own) a key's
// queries.
template <class Mask>
SY_HD Span row_span(const Mask& m, bool keys_own, int row) {
  return keys_own ? m.queries_of(row) : m.keys_of(row);
}

// Causal: k <= q.
struct CausalMask {
  SY_HD CausalMask bind(int, int64_t, int) const { return *this; }
  SY_HD bool ok(int q, int k) const { return k <= q; }
  SY_HD Span keys_of(int q) const { return span(0, q + 1); }
  SY_HD Span queries_of(int k) const { return span(k, INT_MAX); }
  SY_HD int kv_begin(int) const { return 0; }
  SY_HD int kv_end(int q_last) const { return q_last + 1; }
  SY_HD int q_begin(int k_first) const { return k_first; }
  SY_HD int q_end(int) const { return INT_MAX; }
  SY_HD bool tile_full(int q_first, int, int, int k_last) const { return k_last <= q_first; }
};

// The sliding window q - w < k <= q (ops/attention.h), 0 < w < T (the
// launchers take CausalMask for w >= T). Tiles wholly before a query tile's
// window are never loaded: the loops start at kv_begin and stop at q_end.
// No overflow: T <= 2^30 (the launchers check), so k + w < 2^31.
struct WindowMask {
  int w;
  SY_HD WindowMask bind(int, int64_t, int) const { return *this; }
  SY_HD bool ok(int q, int k) const { return k <= q && q - k < w; }
  SY_HD Span keys_of(int q) const { return span(q - w + 1, q + 1); }
  SY_HD Span queries_of(int k) const { return span(k, k + w); }
  SY_HD int kv_begin(int q_first) const { return imax(0, q_first - w + 1); }
  SY_HD int kv_end(int q_last) const { return q_last + 1; }
  SY_HD int q_begin(int k_first) const { return k_first; }
  SY_HD int q_end(int k_last) const { return k_last + w; }
  SY_HD bool tile_full(int q_first, int q_last, int k_first, int k_last) const {
    return k_last <= q_first && q_last - k_first < w;
  }
};

// Whether cluster c is the first that holds the token of bitmap qt as a query
// and the token of bitmap kt as a key (both members of c): no bit below c in
// qt & kt. Bitmaps of W = ceil(K / 64) words, bit c of word c / 64.
SY_HD inline bool first_shared(const uint64_t* qt, const uint64_t* kt, int64_t c) {
  const int64_t w = c / 64;
  for (int64_t i = 0; i < w; ++i)
    if (qt[i] & kt[i]) return false;
  const uint64_t below = (uint64_t{1} << (c % 64)) - 1;
  return (qt[w] & kt[w] & below) == 0;
}

// In a[0, n), ascending: the first index whose value is > x (upper), >= x (lower).
SY_HD inline int upper_index(const int32_t* a, int n, int32_t x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (a[mid] <= x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}
SY_HD inline int lower_index(const int32_t* a, int n, int32_t x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (a[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Causal by index within a segment of packed rows in position order, between
// member rows only: row q asks (is_query[q]) and row k answers (is_key[k]) -
// routed attention's clusters, each packed as the union of its queries and
// keys. bind() points the flags at the segment's rows; a row past the
// segment is no member. No tile is known to be full without reading flags,
// so every tile takes the element mask, pair by pair through ok() (but for
// all_flagged below).
// key_len (per segment, optional): segment b's keys all lie in its first
// key_len[b] rows (block top-k's packing: a key block, then the queries
// that chose it), so query tiles stop there and key tiles past it loop over
// no queries - without it such a segment costs its length squared.
// pos (per row, optional, with key_len): the split layout of clusters a
// token can share (routed attention's balanced mode, ops/cuda/routed_union_pack.h):
// segment b's rows [0, key_len[b]) are its keys and the rest its queries,
// each in position order, and a pair needs pos[k] <= pos[q] instead of
// k <= q. Query tiles then start at the first query a key tile can reach
// and key tiles end at the last key a query tile can see (binary searches
// on pos), so a segment costs about its keys times its queries / 2. A flag
// of 2 (not 1) says the row's token is on that side of an earlier segment
// too; a pair of two such rows counts only where segment b is the first
// that holds both (first_shared on the bitmaps qbits, kbits of the rows'
// positions, `words` words each, bit b % clusters for segment b: stacked
// heads of `clusters` segments each, whose tokens have their own head's bits
// only), so no pair counts twice across segments (flags of 2 need pos and
// words: without them such a pair is refused).
// all_flagged (with pos and no flags of 2 - words 0): every row of the key
// prefix is a key and every row after it a query, each flag 1 (causal
// mode's packing, one cluster per token a side). Then a tile of query rows
// and key rows whose last key is at or before its first query by position
// (both parts ascend) has every pair allowed: tile_full says so and the
// kernels skip the element mask there (four loads a pair: two flags, two
// positions). Without it no tile is known to be full.
struct MemberMask {
  const int32_t* is_query;  // (rows of all segments), 0, 1 or 2 (i32: the tensors have no byte type)
  const int32_t* is_key;
  const int32_t* key_len = nullptr;  // (segments) or null: keys anywhere in the segment
  int len = 0;                       // after bind: the segment's rows
  int klen = INT_MAX;                // after bind: keys only in rows [0, klen)
  const int32_t* pos = nullptr;      // (rows) or null: the split layout above
  const uint64_t* qbits = nullptr;   // (positions, words): where flags of 2 occur
  const uint64_t* kbits = nullptr;
  int words = 0;
  int clusters = INT_MAX;  // segments per stacked head (bit b % clusters; INT_MAX: one head)
  int seg = 0;       // after bind: the segment's index
  bool all_flagged = false;  // see above
  // With pos: row_end(r) of every row of every segment, made once a launch
  // (ops/cuda/attention_varlen.cu's row_ends_kernel), so that the spans,
  // kv_end and q_begin take one load a row where row_end's binary search
  // took ~log2 of the segment's rows dependent loads - per row and tile in
  // the loops that test the element mask (a query row's span, the warps'
  // skips), which routed causal attention's packing does on almost every
  // tile. The kernels read nothing else (so they carry no search: its code
  // beside the load cost the dK/dV kernel 54 registers a thread); on the
  // host, without ends, the searches (the tests run both).
  const int32_t* ends = nullptr;
  SY_HD MemberMask bind(int b, int64_t row0, int n) const {
    return {is_query + row0, is_key + row0, key_len, n, key_len ? imin(key_len[b], n) : n,
            pos ? pos + row0 : nullptr, qbits, kbits, words, clusters, b, all_flagged,
            ends ? ends + row0 : nullptr};
  }
  SY_HD bool ok(int q, int k) const {
    if (!(q < len && k < klen && is_query[q] && is_key[k])) return false;
    if (pos ? pos[k] > pos[q] : k > q) return false;
    return is_query[q] == 1 || is_key[k] == 1 ||
           (pos && words > 0 &&
            first_shared(qbits + int64_t{pos[q]} * words, kbits + int64_t{pos[k]} * words, seg % clusters));
  }
  // Exact spans with all_flagged (no flags to read, no first-shared rule):
  // a query row's keys are the prefix up to its position, a key row's
  // queries the suffix from its position (both parts ascend); rows on the
  // other side, or past the segment, have none.
  SY_HD bool spans_exact() const { return all_flagged && pos && words == 0; }
  SY_HD Span keys_of(int q) const {
    if (!spans_exact()) return {};
    return q < klen || q >= len ? span(0, 0) : span(0, row_end_of(q));
  }
  SY_HD Span queries_of(int k) const {
    if (!spans_exact()) return {};
    return k >= klen ? span(0, 0) : span(row_end_of(k), len);
  }
  SY_HD int kv_begin(int) const { return 0; }
  SY_HD int kv_end(int q_last) const {
    if (!pos) return imin(q_last + 1, klen);
    const int q = imin(q_last, len - 1);  // (a warp's rows may run past the segment)
    return q < klen ? 0 : row_end_of(q);
  }
  // Keys from klen on are seen by no query: an empty range (INT_MAX / 2, so
  // that a tile index computed from it stays far past any end).
  SY_HD int q_begin(int k_first) const {
    if (k_first >= klen) return INT_MAX / 2;
    return pos ? row_end_of(k_first) : k_first;
  }
  // With pos, row r's end: a query row's keys at or before its position (a
  // prefix of [0, klen): their count), a key row's first query row at or
  // after its position. row_end searches; row_end_of reads `ends` (on the
  // host, without ends, it searches). On the device `ends` must be set
  // wherever pos is: member_mask() (attention_varlen.cu) always sets both.
  SY_HD int row_end(int r) const {
    return r < klen ? klen + lower_index(pos + klen, len - klen, pos[r]) : upper_index(pos, klen, pos[r]);
  }
  SY_HD int row_end_of(int r) const {
#ifdef __CUDA_ARCH__
    return ends[r];
#else
    return ends ? ends[r] : row_end(r);
#endif
  }
  // row_end of packed row r of the segments seg[0..S] (r < seg[S]), for an
  // unbound mask: its segment is the last whose start is at or before r (an
  // empty segment's start equals the next one's). What row_ends_kernel
  // (ops/cuda/attention_varlen.cu) writes for each row.
  SY_HD int row_end_at(const int32_t* seg, int S, int r) const {
    const int b = upper_index(seg, S + 1, r) - 1;
    return bind(b, seg[b], seg[b + 1] - seg[b]).row_end(r - seg[b]);
  }
  SY_HD int q_end(int) const { return INT_MAX; }
  SY_HD bool tile_full(int q_first, int q_last, int, int k_last) const {
    if (!all_flagged || !pos || words > 0) return false;
    return k_last < klen && q_first >= klen && q_last < len && pos[k_last] <= pos[q_first];
  }
};

// Which (sequence, tile) a block of a launch works on.
//   dense (no list): sequence z, tile x of the nx in the grid;
//   varlen: a work list, so the grid holds the tiles that exist rather than
//     segments x the longest segment's tiles (which unbalanced clusters and
//     block top-k's long segments make mostly empty): block x takes item x,
//     the x-th (segment, tile) pair in segment order; segment b's items
//     start at the tiles of the segments before it (an exclusive scan of
//     tiles_of(len, tile)), and the items past all of them have none
//     (b = -1). The grid's bound: sum_b ceil(len_b / tile) <= ceil(rows /
//     tile) + S. A block reads its item in one 16-byte load: the scan alone
//     needed a binary search of ~log2 S dependent loads a block, and at
//     routed attention's 2048 segments of ~4 tiles each the blocks are short.
// last_first numbers a sequence's tiles from its end (the kernels launch the
// query tiles with the most keys first).
struct TileWork {
  int b, tile;
};
struct alignas(16) TileItem {
  int32_t b, j, n, pad;  // segment, its tile, its tiles
};
SY_HD inline int tiles_of(int len, int tile) { return (len + tile - 1) / tile; }
// The list kernel's (attention_kernels.cuh's tile_list_kernel) work, thread t
// of nt: a run of segments [lo, hi), its tiles (summed, then placed by the
// block's exclusive scan of the sums), and their items from `start` (the
// scan's value for the run). (A run's items are written by its one thread:
// a few hundred for an unbalanced cluster of ~20k rows at tiles of 64.)
struct SegmentRun {
  int lo, hi;
};
SY_HD inline SegmentRun thread_run(int S, int t, int nt) {
  const int per = (S + nt - 1) / nt, lo = imin(S, t * per);
  return {lo, imin(S, lo + per)};
}
SY_HD inline int run_tiles(const int32_t* seg, SegmentRun r, int tile) {
  int sum = 0;
  for (int b = r.lo; b < r.hi; ++b) sum += tiles_of(seg[b + 1] - seg[b], tile);
  return sum;
}
SY_HD inline void run_items(TileItem* items, int start, const int32_t* seg, SegmentRun r, int tile) {
  for (int b = r.lo; b < r.hi; ++b) {
    const int n = tiles_of(seg[b + 1] - seg[b], tile);
    for (int j = 0; j < n; ++j) items[start + j] = TileItem{b, j, n, 0};
    start += n;
  }
}
SY_HD inline TileWork tile_work(const TileItem* items, int x, int nx, int z, bool last_first) {
  if (!items) return {z, last_first ? nx - 1 - x : x};
  const TileItem it = items[x];
  if (it.b < 0) return {-1, 0};
  return {it.b, last_first ? it.n - 1 - it.j : it.j};
}

// Tiles [first, end) of a loop.
struct TileRange {
  int first, end;
};

// The key tiles of `tile` keys that a block of queries [q0, q0 + rows) of a
// sequence of len tokens loops over (forward, dQ).
// A block whose rows see nothing gets no tiles (the kernels then leave at
// once): rounding the first index down would otherwise give it the tile that
// holds `end`, every pair of it masked.
template <class Mask>
SY_HD TileRange key_tiles(const Mask& m, int q0, int rows, int len, int tile) {
  const int begin = m.kv_begin(q0), end = imin(len, m.kv_end(imin(q0 + rows, len) - 1));
  if (begin >= end) return {0, 0};
  return {begin / tile, (end + tile - 1) / tile};
}

// The query tiles of `tile` queries that a block of keys [k0, k0 + rows)
// loops over (dK, dV).
// (The split layout's keys positioned after every query of their segment
// begin at its end: q_begin = len, no tiles.)
template <class Mask>
SY_HD TileRange query_tiles(const Mask& m, int k0, int rows, int len, int tile) {
  const int begin = m.q_begin(k0), end = imin(len, m.q_end(imin(k0 + rows, len) - 1));
  if (begin >= end) return {0, 0};
  return {begin / tile, (end + tile - 1) / tile};
}

// Whether queries [q, q + rows) can see a key of [k0, k0 + cols): a warp
// whose rows cannot skips the key tile.
template <class Mask>
SY_HD bool rows_see_keys(const Mask& m, int q, int rows, int k0, int cols) {
  return m.kv_end(q + rows - 1) > k0 && m.kv_begin(q) < k0 + cols;
}

// Whether keys [k, k + rows) are seen by a query of [q0, q0 + cols): a warp
// whose keys are not skips the query tile.
template <class Mask>
SY_HD bool keys_seen_by(const Mask& m, int k, int rows, int q0, int cols) {
  return m.q_begin(k) < q0 + cols && m.q_end(k + rows - 1) > q0;
}

// Whether the tile of queries [q0, q0 + qn) and keys [k0, k0 + kn) needs the
// element mask: not every pair allowed, or the tile runs past the sequence.
template <class Mask>
SY_HD bool needs_mask(const Mask& m, int q0, int qn, int k0, int kn, int len) {
  return !m.tile_full(q0, q0 + qn - 1, k0, k0 + kn - 1) || q0 + qn > len || k0 + kn > len;
}

}  // namespace sy::ops::attn
