// Routed attention over its clusters - one per token on each side (causal
// mode), or as many as chose the token (balanced mode: each centroid takes
// its top S queries and keys, so a token is in 0..K clusters on each side) -
// packed for the tiled varlen flash kernels
// (ops/cuda/attention_varlen.h), written as plain functions of one row, token
// or element. ops/cuda/routed_attention.cu gives every call its own thread;
// tests/routed_union_pack_test.cc runs the same steps on the host (the
// varlen kernels replaced by the CPU's sparse attention over the pairs that
// attn::MemberMask allows) against the CPU reference.
//
// Segment c is cluster c's key rows, then its query rows, each in position
// order: the routes' group-major buffers side by side, so no sort is needed,
//   seg[c] = qoffset[c] + koffset[c],  key_len[c] = koffset[c+1] - koffset[c]
//   query buffer row r of c -> packed row r + koffset[c+1]
//   key buffer row j of c   -> packed row j + qoffset[c]
// The mask (attn::MemberMask with pos = the rows' tokens, the split layout)
// allows query row t and key row u of one segment where u <= t by position;
// a row's flag is 2 where its token is on that side of an earlier cluster
// too, and a pair of two such rows counts only in the first cluster that
// holds both (the membership bitmaps), so each pair of the union counts once.
// Each row's kernel output is its cluster's o_c, lse_c (-inf and 0 with no
// pair), and the token's rows merge exactly in ascending cluster order:
//   lse = M + log sum_c e^{lse_c - M},  o = sum_c e^{lse_c - lse} o_c
// over the rows with pairs. The pair counts per query row (the KeyWalk of
// ops/cuda/routed_attention_rows.h: the same rule) decide which rows count,
// size the key sets, and find the lone members: a token in some query
// cluster with no pair attends to itself (o = v_t, lse = q_t . k_t / sqrt(D));
// a token in no query cluster gets o = 0, lse = -inf.
// Backward: dout, o and the merged lse of the token on each of its query
// rows (the pairs' probabilities are those of the union); dq_t sums its
// query rows' dq, dk_u and dv_u its key rows', in ascending cluster order; a
// lone member's self pair adds dout_t to dv_t (its a = 1 and ds = 0).
// Stacked heads (ops/routed_attention.h's Clusters) are more segments of one
// packing: a token's clusters all belong to its own head, positions are rows
// of the stack (ordered within a head), and the bitmaps hold the token's own
// head's clusters (bit c % K); with one cluster per token on each side
// (causal mode) there are no bitmaps and every flag is 1.
#pragma once
#include <math.h>

#include <cstdint>

#include "ops/cuda/routed_attention_rows.h"
#include "ops/cuda/packed_rows.h"  // GatherQKV, GatherGrad, KeySetSizes, dot_of

namespace sy::ops::routed {

// Where the union packing puts a route's buffer rows.
struct UnionLayout {
  const int32_t *qoffset, *koffset;  // (K + 1) the routes' cluster offsets
  SY_HD int64_t query_row(int64_t r, int64_t c) const { return r + koffset[c + 1]; }
  SY_HD int64_t key_row(int64_t j, int64_t c) const { return j + qoffset[c]; }
};

// Token t's kept rows on side s, in ascending cluster order: f(row, cluster).
// k = 1 (its one assignment) or the groups-choose layout (k = K, assignment
// t*K + c is cluster c), whose rows the bitmap words find in O(W + rows).
template <class F>
SY_HD void each_row(const Side& s, int64_t W, int64_t t, F f) {
  if (s.k == 1) {
    const int64_t r = s.row(t, 0);
    if (r >= 0) f(r, int64_t{s.group[t]});
    return;
  }
  const uint64_t* bits = s.bits + t * W;
  for (int64_t w = 0; w < W; ++w)
    for (uint64_t x = bits[w]; x != 0; x &= x - 1) {
#ifdef __CUDA_ARCH__
      const int64_t j = w * 64 + __ffsll(static_cast<long long>(x)) - 1;
#else
      const int64_t j = w * 64 + __builtin_ctzll(x);
#endif
      const int64_t a = t * s.k + j;  // the head's cluster j: group s K + j (stacked heads)
      f(int64_t{s.offset[s.group[a]]} + s.slot[a], int64_t{s.group[a]});
    }
}

// Whether bitmap `bits` has a cluster below c: the row's token is on this
// side of an earlier cluster too (flag 2).
SY_HD inline bool member_before(const uint64_t* bits, int64_t c) {
  for (int64_t w = 0; w < c / 64; ++w)
    if (bits[w]) return true;
  return (bits[c / 64] & ((uint64_t{1} << (c % 64)) - 1)) != 0;
}

// Cluster c <= K: where its segment starts, and its keys.
struct UnionSegments {
  UnionLayout l;
  int64_t K;
  int32_t *seg, *key_len;
  SY_HD void operator()(int64_t c) const {
    seg[c] = l.qoffset[c] + l.koffset[c];
    if (c < K) key_len[c] = l.koffset[c + 1] - l.koffset[c];
  }
};

struct UnionRows {
  int32_t *row_token, *is_query, *is_key;  // (packed rows)
};

// Buffer row r of one side (queries: query rows, else key rows): its packed
// row, its token, and its flag on that side (the other side's flag 0).
struct UnionSideRows {
  Side s;
  int64_t K, W;  // clusters per head, bitmap words (0: one cluster per token, every flag 1)
  UnionLayout l;
  bool queries;
  UnionRows out;
  SY_HD void operator()(int64_t r) const {
    const int64_t t = s.item[r], c = s.row_group[r], p = queries ? l.query_row(r, c) : l.key_row(r, c);
    const int32_t flag = W > 0 && member_before(s.bits + t * W, c % K) ? 2 : 1;
    out.row_token[p] = static_cast<int32_t>(t);
    out.is_query[p] = queries ? flag : 0;
    out.is_key[p] = queries ? 0 : flag;
  }
};

// Query buffer row r: its pairs (keys of its cluster up to t, each counted in
// the first cluster it shares with t). With one cluster per token on both
// sides no pair is shared, and the count is a binary search in the
// cluster's keys (position order); otherwise the walk.
struct CountRow {
  Head h;
  int32_t* cnt;  // (query rows)
  SY_HD void operator()(int64_t r) const {
    const int64_t c = h.qs.row_group[r], t = h.qs.item[r];
    if (h.qs.k == 1 && h.ks.k == 1) {
      const int32_t first = h.ks.offset[c];
      cnt[r] = attn::upper_index(h.ks.item + first, h.ks.offset[c + 1] - first, static_cast<int32_t>(t));
      return;
    }
    KeyWalk w(h, c, t);
    int32_t n = 0;
    while (w.next() >= 0) ++n;
    cnt[r] = n;
  }
};

// Token t: n = its pairs over its query rows, 0 for a lone member, -1 for a
// token in no query cluster (packed_rows.h's KeySetSizes reads the same n).
struct UnionCounts {
  Head h;
  const int32_t* cnt;
  int32_t* n;  // (T)
  SY_HD void operator()(int64_t t) const {
    int32_t total = -1;
    each_row(h.qs, h.W, t, [&](int64_t r, int64_t) { total = (total < 0 ? 0 : total) + cnt[r]; });
    n[t] = total;
  }
};

// Token t: the merged lse (after UnionCounts).
struct UnionLse {
  Head h;
  UnionLayout l;
  const int32_t *cnt, *n;
  const float* lse_p;  // (packed rows)
  float* lse;          // (T)
  SY_HD void operator()(int64_t t) const {
    if (n[t] <= 0) return;  // none or itself: UnionOut writes it
    float M = -INFINITY;
    each_row(h.qs, h.W, t, [&](int64_t r, int64_t c) {
      if (cnt[r] > 0) M = fmaxf(M, lse_p[l.query_row(r, c)]);
    });
    float L = 0.f;
    each_row(h.qs, h.W, t, [&](int64_t r, int64_t c) {
      if (cnt[r] > 0) L += expf(lse_p[l.query_row(r, c)] - M);
    });
    lse[t] = M + logf(L);
  }
};

// V elements of T as floats (E::load each), and back (E::store each): on the
// device one 16- or 8-byte access (copy_chunk; the caller checked the
// alignment with chunk_elems), on the host a loop; the same values.
template <class E, int V>
SY_HD inline void load_chunk(float (&x)[V], const typename E::T* src) {
  alignas(16) typename E::T buf[V];
  copy_chunk<typename E::T, V>(buf, src);
  for (int e = 0; e < V; ++e) x[e] = E::load(buf[e]);
}
template <class E, int V>
SY_HD inline void store_chunk(typename E::T* dst, const float (&x)[V]) {
  alignas(16) typename E::T buf[V];
  for (int e = 0; e < V; ++e) buf[e] = E::store(x[e]);
  copy_chunk<typename E::T, V>(dst, buf);
}

// Chunk i of o: elements t * D + d .. + V-1 (D a multiple of V; V = 1 is
// element by element), and lse_t at d = 0 for the lone and the none. Each
// element's arithmetic is the same whatever V (a row's weight
// e^{lse_c - lse} is computed once a chunk instead of once an element: the
// same value), so every V gives the same bits.
template <class E, int V = 1>
struct UnionOut {
  using T = typename E::T;
  Head h;  // routes only; the values are these:
  const T *q, *k, *v;
  UnionLayout l;
  const int32_t *cnt, *n;
  const T* out_p;      // (packed rows, D)
  const float* lse_p;  // (packed rows)
  float scale;
  T* o;
  float* lse;
  SY_HD void operator()(int64_t i) const {
    const int64_t D = h.D, per_row = D / V, t = i / per_row, d = i % per_row * V, at = t * D + d;
    if (n[t] < 0) {
      float zero[V];
      for (int e = 0; e < V; ++e) zero[e] = 0.f;
      store_chunk<E, V>(o + at, zero);
      if (d == 0) lse[t] = -INFINITY;
      return;
    }
    if (n[t] == 0) {
      copy_chunk<T, V>(o + at, v + at);
      if (d == 0) lse[t] = dot_of<E>(q + t * D, k + t * D, D) * scale;
      return;
    }
    const float L = lse[t];
    float acc[V];
    for (int e = 0; e < V; ++e) acc[e] = 0.f;
    each_row(h.qs, h.W, t, [&](int64_t r, int64_t c) {
      if (cnt[r] == 0) return;
      const int64_t p = l.query_row(r, c);
      const float w = expf(lse_p[p] - L);
      float x[V];
      load_chunk<E, V>(x, out_p + p * D + d);
      for (int e = 0; e < V; ++e) acc[e] += w * x[e];
    });
    store_chunk<E, V>(o + at, acc);
  }
};

// Chunk i (elements t * D + d .. + V-1, as UnionOut's): dq, dk, dv
// accumulate the packed gradients of t's rows (after UnionCounts); a lone
// member's self pair adds dout_t to dv_t. Every V gives the same bits.
template <class E, int V = 1>
struct UnionScatter {
  using T = typename E::T;
  Head h;
  UnionLayout l;
  const int32_t* n;
  const T* dqkv_p;  // (packed rows, 3D)
  const T* dout;    // (T, D)
  T *dq, *dk, *dv;
  SY_HD void operator()(int64_t i) const {
    const int64_t D = h.D, per_row = D / V, t = i / per_row, d = i % per_row * V, at = t * D + d;
    float x[V];
    if (n[t] >= 0) {
      float g[V];
      for (int e = 0; e < V; ++e) g[e] = 0.f;
      each_row(h.qs, h.W, t, [&](int64_t r, int64_t c) {
        load_chunk<E, V>(x, dqkv_p + l.query_row(r, c) * 3 * D + d);
        for (int e = 0; e < V; ++e) g[e] += x[e];
      });
      load_chunk<E, V>(x, dq + at);
      for (int e = 0; e < V; ++e) x[e] += g[e];
      store_chunk<E, V>(dq + at, x);
    }
    bool key = false;
    float gk[V], gv[V];
    for (int e = 0; e < V; ++e) gk[e] = gv[e] = 0.f;
    each_row(h.ks, h.W, t, [&](int64_t j, int64_t c) {
      const T* g = dqkv_p + l.key_row(j, c) * 3 * D;
      load_chunk<E, V>(x, g + D + d);
      for (int e = 0; e < V; ++e) gk[e] += x[e];
      load_chunk<E, V>(x, g + 2 * D + d);
      for (int e = 0; e < V; ++e) gv[e] += x[e];
      key = true;
    });
    if (n[t] == 0) {
      load_chunk<E, V>(x, dout + at);
      for (int e = 0; e < V; ++e) gv[e] += x[e];
    }
    if (key) {
      load_chunk<E, V>(x, dk + at);
      for (int e = 0; e < V; ++e) x[e] += gk[e];
      store_chunk<E, V>(dk + at, x);
    }
    if (key || n[t] == 0) {
      load_chunk<E, V>(x, dv + at);
      for (int e = 0; e < V; ++e) x[e] += gv[e];
      store_chunk<E, V>(dv + at, x);
    }
  }
};

}  // namespace sy::ops::routed
