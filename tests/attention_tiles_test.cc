// The tile logic of the attention kernels without a GPU: the loops of
// ops/cuda/attention_kernels.cuh, replayed here with the functions of
// ops/cuda/attention_tiles.h and the kernels' tile sizes, count how often
// each (query, key) pair of a sequence is computed unmasked or passes the
// element mask. Every allowed pair must count exactly once and every other
// pair never, for the causal mask and sliding windows (shorter than a warp's
// rows, than a tile, across tiles, one short of the sequence), on sequences
// that are and are not multiples of the tiles. What this leaves to the GPU
// tests (backend_ops_test): the arithmetic inside a tile, and the loads.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "ops/cuda/attention_tiles.h"

namespace sy {
namespace {

namespace attn = ops::attn;

// One kernel's tiling: blocks own `own` rows (queries, or keys for dK/dV)
// split among warps of `warp_rows` rows each, and loop over tiles of `loop`
// rows of the other kind.
struct Tiling {
  const char* name;
  int own, warp_rows, loop;
  bool keys_own;  // the dK/dV kernels: blocks own keys and loop over queries
};

// The kernels' tilings (attention_kernels.cuh: Configs). The f32 kernels have no warp
// skip: a "warp" there is the whole block.
const Tiling kTilings[] = {
    {"bf16 forward d64", 128, 32, 64, false}, {"bf16 forward d128", 128, 16, 64, false},
    {"bf16 dq", 64, 16, 64, false},           {"bf16 dkdv d64", 64, 16, 64, true},
    {"bf16 dkdv d128", 64, 16, 32, true},     {"f32 forward/dq 64", 64, 64, 64, false},
    {"f32 forward/dq 32", 32, 32, 32, false}, {"f32 dkdv 64", 64, 64, 64, true},
    {"f32 dkdv 32", 32, 32, 32, true},
    // ops/cuda/attention_variants.h's other bf16 tilings
    {"variant forward d64 8x16", 128, 16, 64, false}, {"variant forward d64 bn128", 128, 32, 128, false},
    {"variant forward d128 4x16", 64, 16, 64, false}, {"variant forward d128 bn32", 128, 16, 32, false},
    {"variant dkdv d64 8 warps", 128, 16, 64, true},  {"variant dkdv d64 bn128", 64, 16, 128, true},
    {"variant dkdv d128 8 warps", 128, 16, 32, true}, {"variant dq 8 warps", 128, 16, 64, false},
    {"variant dq bn128", 64, 16, 128, false},         {"variant dq bn32", 64, 16, 32, false},
    // the variants with two row tiles a warp (32 rows)
    {"variant forward d128 4x32 bn32", 128, 32, 32, false}, {"variant dq 4x32 bn32", 128, 32, 32, false},
    {"variant dq 4x32 bn16", 128, 32, 16, false},           {"variant dkdv 4x32 bn32", 128, 32, 32, true},
    {"variant dkdv 4x32 bn16", 128, 32, 16, true},
};

// How often each pair (q, k), q, k < len, is computed: the kernel's loops.
template <class Mask>
std::vector<int> computed(const Mask& m, const Tiling& t, int len) {
  std::vector<int> n(static_cast<size_t>(len) * len, 0);
  for (int b0 = 0; b0 < len; b0 += t.own) {
    const attn::TileRange r =
        t.keys_own ? attn::query_tiles(m, b0, t.own, len, t.loop) : attn::key_tiles(m, b0, t.own, len, t.loop);
    for (int j = r.first; j < r.end; ++j)
      for (int w0 = b0; w0 < b0 + t.own; w0 += t.warp_rows) {
        const int l0 = j * t.loop;
        if (t.keys_own ? !attn::keys_seen_by(m, w0, t.warp_rows, l0, t.loop)
                       : !attn::rows_see_keys(m, w0, t.warp_rows, l0, t.loop))
          continue;
        const bool masked = t.keys_own ? attn::needs_mask(m, l0, t.loop, w0, t.warp_rows, len)
                                       : attn::needs_mask(m, w0, t.warp_rows, l0, t.loop, len);
        for (int a = w0; a < w0 + t.warp_rows; ++a) {
          // the row's span, once a tile (the kernels' element mask: row_ok)
          const attn::Span sp = masked ? attn::row_span(m, t.keys_own, a) : attn::Span{};
          for (int c = l0; c < l0 + t.loop; ++c) {
            const int q = t.keys_own ? c : a, k = t.keys_own ? a : c;
            if (q >= len || k >= len) continue;  // never written (rows) or zero-filled and masked (columns)
            if (!masked || attn::row_ok(m, sp, t.keys_own, q, k)) ++n[static_cast<size_t>(q) * len + k];
          }
        }
      }
  }
  return n;
}

template <class Mask>
void expect_each_allowed_pair_once(const Mask& m, const std::string& what) {
  for (const Tiling& t : kTilings)
    for (const int len : {1, 15, 16, 33, 64, 100, 128, 129, 200, 300}) {
      const std::vector<int> n = computed(m, t, len);
      int wrong = 0;
      for (int q = 0; q < len; ++q)
        for (int k = 0; k < len; ++k) {
          const int want = m.ok(q, k) ? 1 : 0, got = n[static_cast<size_t>(q) * len + k];
          if (got != want && ++wrong <= 3)
            ADD_FAILURE() << what << ", " << t.name << ", len " << len << ": pair (q " << q << ", k " << k
                          << ") computed " << got << " times, allowed " << want;
        }
      if (wrong > 3) ADD_FAILURE() << "... and " << wrong - 3 << " more";
    }
}

TEST(AttentionTiles, CausalComputesEachAllowedPairOnce) { expect_each_allowed_pair_once(attn::CausalMask{}, "causal"); }

TEST(AttentionTiles, WindowComputesEachAllowedPairOnce) {
  // Every window up to 34 (every residue modulo the warps' 16 rows and the
  // tiles' 32: an off-by-one in a range only shows where it crosses a tile
  // edge), then windows around 64 and 128 and one short of the longest len.
  std::vector<int> windows;
  for (int w = 1; w <= 34; ++w) windows.push_back(w);
  for (const int w : {62, 63, 64, 65, 66, 100, 127, 128, 129, 130, 299}) windows.push_back(w);
  for (const int w : windows) expect_each_allowed_pair_once(attn::WindowMask{w}, "window " + std::to_string(w));
}

// Routed attention's member mask on packed segments: random query and key
// flags (some rows both, some one, some neither), every length.
TEST(AttentionTiles, MemberMaskComputesEachAllowedPairOnce) {
  uint32_t state = 12345;
  auto bit = [&state] {
    state = state * 1664525u + 1013904223u;
    return static_cast<int32_t>((state >> 16) % 3 != 0);  // two in three rows
  };
  for (const Tiling& t : kTilings)
    for (const int len : {1, 15, 16, 33, 64, 100, 128, 129, 200, 300}) {
      std::vector<int32_t> is_q(len), is_k(len);
      for (int i = 0; i < len; ++i) is_q[i] = bit(), is_k[i] = bit();
      const attn::MemberMask m = attn::MemberMask{is_q.data(), is_k.data()}.bind(0, 0, len);
      const std::vector<int> n = computed(m, t, len);
      for (int q = 0; q < len; ++q)
        for (int k = 0; k < len; ++k) {
          const bool allowed = k <= q && is_q[q] && is_k[k];
          ASSERT_EQ(n[static_cast<size_t>(q) * len + k], allowed ? 1 : 0)
              << t.name << ", len " << len << ", q " << q << ", k " << k;
        }
    }
}

// With a key prefix (block top-k's segments: a key block, then the queries
// that chose it): the same, keys past key_len never seen whatever their flag.
TEST(AttentionTiles, MemberMaskWithAKeyPrefixComputesEachAllowedPairOnce) {
  uint32_t state = 777;
  auto bit = [&state] {
    state = state * 1664525u + 1013904223u;
    return static_cast<int32_t>((state >> 16) % 3 != 0);
  };
  for (const Tiling& t : kTilings)
    for (const int len : {1, 16, 33, 100, 129, 300})
      for (const int klen : {0, 1, 15, 16, 17, 64, 65, 128}) {
        std::vector<int32_t> is_q(len), is_k(len);
        for (int i = 0; i < len; ++i) is_q[i] = bit(), is_k[i] = bit();
        const int32_t key_len[2] = {-1, klen};  // segment 1's
        const attn::MemberMask m = attn::MemberMask{is_q.data(), is_k.data(), key_len}.bind(1, 0, len);
        const std::vector<int> n = computed(m, t, len);
        for (int q = 0; q < len; ++q)
          for (int k = 0; k < len; ++k) {
            const bool allowed = k <= q && k < klen && is_q[q] && is_k[k];
            ASSERT_EQ(n[static_cast<size_t>(q) * len + k], allowed ? 1 : 0)
                << t.name << ", len " << len << ", key_len " << klen << ", q " << q << ", k " << k;
          }
      }
}

// The point of the prefix: a segment of 64 keys and 4032 queries costs one
// key tile per query tile, and no query tile for the key tiles past it.
TEST(AttentionTiles, KeyPrefixVisitsOnlyItsKeyTiles) {
  const std::vector<int32_t> flags(4096, 1);
  const int32_t key_len[1] = {64};
  const attn::MemberMask m = attn::MemberMask{flags.data(), flags.data(), key_len}.bind(0, 0, 4096);
  for (int q0 = 0; q0 < 4096; q0 += 64) {
    const attn::TileRange r = attn::key_tiles(m, q0, 64, 4096, 64);
    EXPECT_EQ(r.end - r.first, 1) << "query block at " << q0;
    const attn::TileRange back = attn::query_tiles(m, q0, 64, 4096, 64);
    EXPECT_EQ(back.end > back.first, q0 == 0) << "dK/dV block at key " << q0;
  }
}

// The split layout of clusters a token can share (routed attention's
// balanced mode): keys in rows [0, klen), then queries, each in ascending
// position; a pair by position, and flags of 2 counting only where the
// segment is the first that holds both tokens (bitmaps of two words, the
// segment index 70, so both words matter). The allowed pairs written out
// here apart from MemberMask::ok, so ok is checked as well as the tiling.
// A small linear congruential stream: next(n) in [0, n).
struct Lcg {
  uint32_t state;
  uint32_t operator()(uint32_t n) {
    state = state * 1664525u + 1013904223u;
    return (state >> 8) % n;
  }
};

// The kernels' tilings, and tiles of one row, where a binary search off by
// one position shows wherever it lands (not only at a tile's edge).
std::vector<Tiling> split_layout_tilings() {
  std::vector<Tiling> tilings(std::begin(kTilings), std::end(kTilings));
  tilings.push_back({"one row, queries own", 1, 1, 1, false});
  tilings.push_back({"one row, keys own", 1, 1, 1, true});
  return tilings;
}

// MemberMask::ends for segment b at packed rows [row0, row0 + len), as the
// varlen launch's row_ends_kernel makes it: row_end_at of every row of that
// segment, over offsets where segments 0 .. b-2 are empty (at row 0) and
// b - 1 holds the rows before row0 (so the search passes empty segments);
// the other rows, and 64 after the segment, poisoned. Into `ends`; returns
// its data for the unbound mask's `ends`.
const int32_t* row_ends(const attn::MemberMask& m, int b, int row0, int len, std::vector<int32_t>& ends) {
  std::vector<int32_t> seg(b + 2, 0);
  seg[b] = row0, seg[b + 1] = row0 + len;
  ends.assign(static_cast<size_t>(row0 + len + 64), -99);
  for (int r = row0; r < row0 + len; ++r) ends[static_cast<size_t>(r)] = m.row_end_at(seg.data(), b + 1, r);
  return ends.data();
}

TEST(AttentionTiles, SplitLayoutComputesEachAllowedPairOnce) {
  Lcg next{4242};
  const int seg = 70, words = 2;
  for (const Tiling& t : split_layout_tilings())
    for (const int len : {1, 16, 33, 100, 129, 300})
      for (const int klen : {0, 1, 15, 16, 17, 64, 65, 128}) {
        if (klen > len) continue;
        std::vector<int32_t> is_q(len, 0), is_k(len, 0), pos(len);
        for (int i = 0, p = 0; i < klen; ++i) pos[i] = p += static_cast<int>(next(3)), is_k[i] = next(3);
        for (int i = klen, p = 0; i < len; ++i) pos[i] = p += static_cast<int>(next(3)), is_q[i] = next(3);
        std::vector<uint64_t> qbits(2 * len * words), kbits(2 * len * words);
        for (auto* b : {&qbits, &kbits})
          for (uint64_t& w : *b) w = next(4) == 0 ? uint64_t{1} << next(64) : 0;  // a few earlier clusters
        std::vector<int32_t> kl(71, 0);
        kl[seg] = klen;
        attn::MemberMask m{is_q.data(), is_k.data(), kl.data()};
        m.pos = pos.data(), m.qbits = qbits.data(), m.kbits = kbits.data(), m.words = words;
        std::vector<int32_t> ends;
        for (const bool with_ends : {false, true}) {
          if (with_ends) m.ends = row_ends(m, seg, 0, len, ends);
          const attn::MemberMask b = m.bind(seg, 0, len);
          const std::vector<int> n = computed(b, t, len);
          for (int q = 0; q < len; ++q)
            for (int k = 0; k < len; ++k) {
              bool allowed = k < klen && q >= klen && is_q[q] && is_k[k] && pos[k] <= pos[q];
              if (allowed && is_q[q] == 2 && is_k[k] == 2) {
                const uint64_t* qb = &qbits[pos[q] * words];
                const uint64_t* kb = &kbits[pos[k] * words];
                allowed = (qb[0] & kb[0]) == 0 && (qb[1] & kb[1] & ((uint64_t{1} << (seg - 64)) - 1)) == 0;
              }
              ASSERT_EQ(n[static_cast<size_t>(q) * len + k], allowed ? 1 : 0)
                  << t.name << ", len " << len << ", key_len " << klen << ", q " << q << ", k " << k
                  << (with_ends ? ", ends precomputed" : "");
            }
        }
      }
}

// 256 keys and 256 queries interleaved by position (key i at 2i, query i
// at 2i + 1), split layout: keys in rows [0, 256), queries after.
struct Interleaved {
  std::vector<int32_t> is_q, is_k, pos;
  int32_t key_len[1] = {256};
  Interleaved() : is_q(512, 0), is_k(512, 0), pos(512) {
    for (int i = 0; i < 256; ++i) is_k[i] = 1, pos[i] = 2 * i, is_q[256 + i] = 1, pos[256 + i] = 2 * i + 1;
  }
  attn::MemberMask mask() const {
    attn::MemberMask m{is_q.data(), is_k.data(), key_len};
    m.pos = pos.data();
    return m;
  }
};

// The point of positions: 256 keys and 256 queries interleaved (key i at
// 2i, query i at 2i + 1) cost the causal half of the key-query tiles, not
// all of them, in the forward and the dK/dV loops.
TEST(AttentionTiles, SplitLayoutVisitsOnlyReachableTiles) {
  const Interleaved il;
  const std::vector<uint64_t> bits(1024, 0);
  attn::MemberMask m = il.mask();
  m.qbits = bits.data(), m.kbits = bits.data(), m.words = 1;
  const attn::MemberMask b = m.bind(0, 0, 512);
  int forward = 0, backward = 0;
  for (int r0 = 0; r0 < 512; r0 += 64) {
    const attn::TileRange kt = attn::key_tiles(b, r0, 64, 512, 64), qt = attn::query_tiles(b, r0, 64, 512, 64);
    forward += std::max(0, kt.end - kt.first);
    backward += std::max(0, qt.end - qt.first);
  }
  EXPECT_EQ(forward, 1 + 2 + 3 + 4);
  EXPECT_EQ(backward, 4 + 3 + 2 + 1);
}

// Causal mode's packing (all_flagged: every key-prefix row a key, every
// later row a query, flag 1, no bitmaps): tiles whose last key is at or
// before their first query by position skip the element mask, and every
// allowed pair (written out here apart from MemberMask::ok) still counts
// exactly once, positions with ties (a token that is both a key and a query
// of the cluster) included, by the rows' spans (keys_of, queries_of: each
// row's end, row_end, searched or read from ends; no flag read). (Planted:
// tile_full comparing the first key's position instead of the last's fails
// here at once; so do a query row's end searched with lower_index, which
// drops a key at the query's own position, and a key row's with
// upper_index.)
TEST(AttentionTiles, AllFlaggedSplitLayoutComputesEachAllowedPairOnce) {
  Lcg next{777};
  for (const Tiling& t : split_layout_tilings())
    for (const int len : {1, 16, 33, 100, 129, 300})
      for (const int klen : {0, 1, 15, 16, 17, 64, 65, 128}) {
        if (klen > len) continue;
        // The segment at packed rows [off, off + len) (bind's row0), the rows before it poisoned.
        const int off = 3;
        std::vector<int32_t> is_q(off + len, 9), is_k(off + len, 9), pos(off + len, -7);
        for (int i = 0, p = 0; i < klen; ++i) pos[off + i] = p += static_cast<int>(next(3)), is_k[off + i] = 1;
        for (int i = klen, p = 0; i < len; ++i) pos[off + i] = p += static_cast<int>(next(3)), is_q[off + i] = 1;
        const int32_t kl[2] = {-5, klen};
        attn::MemberMask m{is_q.data(), is_k.data(), kl};
        m.pos = pos.data(), m.all_flagged = true;
        std::vector<int32_t> ends;
        for (const bool with_ends : {false, true}) {
          if (with_ends) m.ends = row_ends(m, 1, off, len, ends);
          const attn::MemberMask b = m.bind(1, off, len);
          ASSERT_TRUE(b.spans_exact());  // (the kernels' element mask then reads no flag)
          const std::vector<int> n = computed(b, t, len);
          for (int q = 0; q < len; ++q)
            for (int k = 0; k < len; ++k) {
              const bool allowed = k < klen && q >= klen && pos[off + k] <= pos[off + q];
              ASSERT_EQ(n[static_cast<size_t>(q) * len + k], allowed ? 1 : 0)
                  << t.name << ", len " << len << ", key_len " << klen << ", q " << q << ", k " << k
                  << (with_ends ? ", ends precomputed" : "");
            }
        }
      }
}

// In causal mode's packing every tile a block loops over holds a pair its
// rows compute: a query row's keys are a prefix, a key row's queries a
// suffix, so the loops' ranges are exact. In particular a block of keys
// positioned after every query of the segment (the segment's last keys)
// loops over nothing: its first query row is the segment's end, and the
// range [end / tile, ceil(end / tile)) rounded down would give it the tile
// holding end, every pair of it masked. (Planted: key_tiles and query_tiles
// without their `begin >= end` check fail here at len 129, key_len 128.)
TEST(AttentionTiles, AllFlaggedSplitLayoutVisitsNoTileWithoutAPair) {
  Lcg next{4242};
  for (const Tiling& t : split_layout_tilings())
    for (const int len : {1, 16, 33, 100, 129, 300})
      for (const int klen : {0, 1, 15, 16, 17, 64, 65, 128}) {
        if (klen > len) continue;
        std::vector<int32_t> is_q(len, 0), is_k(len, 0), pos(len);
        for (int i = 0, p = 0; i < klen; ++i) pos[i] = p += static_cast<int>(next(3)), is_k[i] = 1;
        for (int i = klen, p = 0; i < len; ++i) pos[i] = p += static_cast<int>(next(3)), is_q[i] = 1;
        const int32_t kl[1] = {klen};
        attn::MemberMask m{is_q.data(), is_k.data(), kl};
        m.pos = pos.data(), m.all_flagged = true;
        const attn::MemberMask b = m.bind(0, 0, len);
        for (int b0 = 0; b0 < len; b0 += t.own) {
          const attn::TileRange r =
              t.keys_own ? attn::query_tiles(b, b0, t.own, len, t.loop) : attn::key_tiles(b, b0, t.own, len, t.loop);
          for (int j = r.first; j < r.end; ++j) {
            bool some = false;
            for (int a = b0; a < std::min(len, b0 + t.own) && !some; ++a)
              for (int c = j * t.loop; c < std::min(len, (j + 1) * t.loop) && !some; ++c)
                some = t.keys_own ? b.ok(c, a) : b.ok(a, c);
            ASSERT_TRUE(some) << t.name << ", len " << len << ", key_len " << klen << ": the block of rows from "
                              << b0 << " loops over tile " << j << " of " << t.loop
                              << (t.keys_own ? " queries" : " keys") << ", none of which it pairs with";
          }
        }
      }
}

// What all_flagged saves: 256 keys and 256 queries interleaved (key i at 2i,
// query i at 2i + 1), query and key tiles of 64: of the 10 key tiles the
// forward visits, the 6 strictly below the diagonal need no element mask;
// without all_flagged every one does.
TEST(AttentionTiles, AllFlaggedSplitLayoutSkipsTheMaskBelowTheDiagonal) {
  const Interleaved il;
  for (const bool flagged : {true, false}) {
    attn::MemberMask m = il.mask();
    m.all_flagged = flagged;
    const attn::MemberMask b = m.bind(0, 0, 512);
    int visited = 0, unmasked = 0;
    for (int q0 = 256; q0 < 512; q0 += 64) {
      const attn::TileRange kt = attn::key_tiles(b, q0, 64, 512, 64);
      for (int j = kt.first; j < kt.end; ++j) ++visited, unmasked += !attn::needs_mask(b, q0, 64, j * 64, 64, 512);
    }
    EXPECT_EQ(visited, 10);
    EXPECT_EQ(unmasked, flagged ? 6 : 0) << (flagged ? "all_flagged" : "flags unknown");
  }
}

// The varlen work list (attn::tile_work over attn::TileItem): over segments
// of random lengths (empty ones included), fewer and more than the list
// kernel's threads, and every tile size the kernels use, the list built as
// attention_kernels.cuh's tile_list_kernel builds it (each thread's run of
// segments, thread_run; their tile sums, run_tiles; an exclusive scan of the
// sums; each run's items, run_items; the rest of the grid's bound marked
// empty) gives the blocks of the grid each (segment, tile) exactly once, in
// segment order, a segment's tiles in order or from its end, and the blocks
// past them no work. (Planted: items numbered from the segment's end fail
// here; so does a run placed one item late.)
TEST(AttentionTiles, WorkListVisitsEachTileOnce) {
  uint32_t state = 99;
  auto next = [&state](uint32_t n) {
    state = state * 1664525u + 1013904223u;
    return static_cast<int>((state >> 8) % n);
  };
  for (int trial = 0; trial < 24; ++trial) {
    const int S = trial < 20 ? 1 + next(40) : 1000 + next(3000);  // (the kernel's 1024 threads: runs of 1 to 4)
    std::vector<int32_t> seg(S + 1, 0);
    for (int b = 0; b < S; ++b)
      seg[b + 1] = seg[b] + (next(4) == 0 ? 0 : next(trial < 10 ? 300 : trial < 20 ? 5000 : 200));
    for (const int nt : {1024, 7})
      for (const int tile : {16, 32, 64, 128})
        for (const bool last_first : {false, true}) {
          const int bound = (seg[S] + tile - 1) / tile + S;  // attention_kernels.cuh's grid_x()
          std::vector<attn::TileItem> items(bound, attn::TileItem{7, 7, 7, 7});  // (poisoned)
          int total = 0;
          std::vector<int> start(nt);
          for (int t = 0; t < nt; ++t) start[t] = total, total += attn::run_tiles(seg.data(), attn::thread_run(S, t, nt), tile);
          ASSERT_LE(total, bound);
          for (int t = 0; t < nt; ++t) attn::run_items(items.data(), start[t], seg.data(), attn::thread_run(S, t, nt), tile);
          for (int x = total; x < bound; ++x) items[x] = attn::TileItem{-1, 0, 0, 0};
          std::vector<std::vector<int>> seen(S);
          for (int b = 0; b < S; ++b) seen[b].assign(attn::tiles_of(seg[b + 1] - seg[b], tile), 0);
          attn::TileWork prev{-1, 0};
          for (int x = 0; x < bound; ++x) {
            const attn::TileWork w = attn::tile_work(items.data(), x, bound, 0, last_first);
            if (x >= total) {
              EXPECT_EQ(w.b, -1) << "block " << x << " past the list";
              continue;
            }
            ASSERT_GE(w.b, 0);
            ASSERT_LT(w.b, S);
            ASSERT_GE(w.tile, 0);
            ASSERT_LT(w.tile, static_cast<int>(seen[w.b].size())) << "segment " << w.b;
            ++seen[w.b][w.tile];
            const int n = static_cast<int>(seen[w.b].size());
            if (prev.b == w.b)  // a segment's tiles in order, or from its end
              ASSERT_EQ(w.tile, last_first ? prev.tile - 1 : prev.tile + 1) << "segment " << w.b;
            else  // a new segment, after the last: its first tile (from the end: its last)
              ASSERT_TRUE(w.b > prev.b && w.tile == (last_first ? n - 1 : 0)) << "block " << x;
            prev = w;
          }
          for (int b = 0; b < S; ++b)
            for (size_t j = 0; j < seen[b].size(); ++j)
              ASSERT_EQ(seen[b][j], 1) << "segment " << b << " tile " << j << " tile size " << tile << ", " << nt
                                       << " threads";
        }
  }
  // dense: sequence z, tile x (or from the end)
  const attn::TileWork d = attn::tile_work(nullptr, 1, 5, 2, true);
  EXPECT_EQ(d.b, 2);
  EXPECT_EQ(d.tile, 3);
}

// The point of the window: a query tile loops over the key tiles its window
// reaches, not over the whole prefix. At len 4096, w 512 and 64-row tiles,
// a forward block visits at most ceil((512 - 1 + 64) / 64) + 1 = 10 key tiles.
TEST(AttentionTiles, WindowVisitsOnlyTheTilesItsWindowReaches) {
  const attn::WindowMask m{512};
  int most = 0, total = 0;
  for (int q0 = 0; q0 < 4096; q0 += 64) {
    const attn::TileRange r = attn::key_tiles(m, q0, 64, 4096, 64);
    most = std::max(most, r.end - r.first);
    total += r.end - r.first;
    const attn::TileRange back = attn::query_tiles(m, q0, 64, 4096, 64);
    EXPECT_LE(back.end - back.first, 10) << "dK/dV block at key " << q0;
  }
  EXPECT_LE(most, 10);
  EXPECT_LT(total, 64 * 10);
  // The causal mask visits the whole prefix: 64 * 65 / 2 tiles.
  int causal = 0;
  for (int q0 = 0; q0 < 4096; q0 += 64) {
    const attn::TileRange r = attn::key_tiles(attn::CausalMask{}, q0, 64, 4096, 64);
    causal += r.end - r.first;
  }
  EXPECT_EQ(causal, 64 * 65 / 2);
}

}  // namespace
}  // namespace sy
