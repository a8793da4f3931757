// Routed attention's attention on CUDA, written as plain functions of one row
// or one element (equations in ops/routed_attention.h and
// ops/sparse_attention.h). ops/cuda/routed_attention.cu gives every call its
// own thread, or warp (the rows that walk their pairs: "a warp a row"
// below); tests/routed_attention_rows_test.cc runs the same functions and
// the same step sequences on the host (a warp as 32 threads), against the
// CPU reference, so the indexing, the lanes' shares, the pair rule and both
// merges are checked on machines without a GPU. Nothing here includes CUDA
// headers: SY_HD is __host__ __device__ under nvcc and nothing under a C++
// compiler.
//
// Layout. Each side (queries, keys) is a Route over the T tokens of one head
// of one sequence (K clusters, k = 1 assignment per token, or k = K with
// assignment t*K + c for cluster c: either way a token's assignments in index
// order are its clusters in ascending order), or of several heads stacked
// (cluster c of head s is group s K + c; its tokens rows [s T, (s+1) T)).
// Its group-major buffer rows are inverted once, row -> (token, cluster); a
// cluster's rows hold its members in position order. Membership bitmaps
// (T, W = ceil(K / 64) words, bit c % K) give the pair rule in O(W), and are
// not needed (W = 0) where every token has one cluster per side:
//   (t, u) counts in cluster c  <=>  t in queries(c), u in keys(c), u <= t and
//                                    no cluster c' < c holds t as a query and u as a key.
//
// Forward (one warp per query row r = (t, c), then one thread per query t,
// then per element of o):
//   rows     an online softmax over c's keys up to t: m the running max, l
//            the running sum, o_c = sum exp(s - m) v / l; lse_c = m + log l
//            and the row's pair count (lse_c = -inf, o_c = 0 with no pair)
//   queries  lse = M + log sum_c exp(lse_c - M) over t's clusters in ascending
//            order (M the largest lse_c); a member of some cluster with no pair
//            attends to itself (lse = q_t . k_t / sqrt(D), one pair); a token in
//            no cluster gets lse = -inf and no pair
//   out      o = sum_c exp(lse_c - lse) o_c, clusters ascending (itself: v_t; none: 0)
//   keys     the union key sets (ops/sparse_attention.h KeySets): offsets by an
//            exclusive scan of the pair counts (on the host), then each query
//            writes its clusters' pairs; with k > 1 a radix sort on (t, u) puts
//            every query's keys in position order, as the CPU's std::sort does.
// Backward (the pairs recomputed from the clusters; a = exp(s - lse) with the
// merged lse and Delta_t = dout_t . o_t, FlashAttention's form):
//   delta        per query
//   query rows   (a warp each) dq_c = sum_u ds_tu k_u over c's pairs of t, and the pair count
//   queries      the self pair of a member with no pair: its a and ds
//   dq           dq_t += sum_c dq_c (ascending) + the self pair's ds k_t
//   key rows     (a warp each) dk_c = sum_t ds_tu q_t, dv_c = sum_t a_tu dout_t over c's pairs of u
//   dk, dv       dk_u += sum_c dk_c (ascending) + self pair; dv likewise
// with ds_tu = a_tu (dout_t . v_u - Delta_t) / sqrt(D), as the CPU's sparse
// backward. Every output has one owner adding in a fixed order: no atomics,
// two runs give the same bits.
#pragma once
#include <math.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "ops/cuda/attention_tiles.h"

#include "ops/cuda/host_device.h"  // SY_HD

namespace sy::ops::routed {

// One side of the clusters (a Route) and its inverted rows and bitmaps.
struct Side {
  const int32_t* group;      // (T * k) assignment -> cluster
  const int32_t* slot;       // (T * k) row within the cluster, or -1 (dropped or unused)
  const int32_t* offset;     // (K + 1) first row of each cluster
  int64_t k;                 // assignments per token
  const int32_t* item;       // (rows) row -> token position
  const int32_t* row_group;  // (rows) row -> cluster
  const uint64_t* bits;      // (T, W) bit c % K set where the token is a member of cluster c (null: W = 0)

  // Buffer row of token t's j-th assignment, or -1 (not kept).
  SY_HD int64_t row(int64_t t, int64_t j) const {
    const int64_t a = t * k + j;
    return slot[a] >= 0 ? int64_t{offset[group[a]]} + slot[a] : -1;
  }
};

// One head of one sequence, or several stacked (ops/routed_attention.h's
// Clusters): q, k, v (T, D) contiguous, T all heads' tokens, K clusters per
// head, W bitmap words per token (bitmap_words).
struct Head {
  const float *q, *k, *v;
  int64_t T, D, K, W;
  float scale;  // 1 / sqrt(D)
  Side qs, ks;  // queries, keys
};

SY_HD inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Causal mode's exact centroid score x . m (ops/cuda/routed_attention.cu's
// nearest-centroid kernel: its rescores and row norms), D a multiple of 4:
// four running sums by fma, sum j taking d = j mod 4, then (s0 + s1) +
// (s2 + s3). Four chains rather than one because a rescore runs on one lane
// while the warp waits: one chain is D dependent FMAs (64 at D 64), four are
// D / 4. Its rounding, within (D / 4 + 2) 2^-24 |x||m|, is under the
// kernel's margin as the single chain's was. tests/routed_attention_test.cc's
// host argmax calls this same function.
template <int D>
SY_HD inline float centroid_dot(const float* x, const float* m) {
  static_assert(D % 4 == 0, "centroid_dot: D a multiple of 4");
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll 4
  for (int d = 0; d < D; d += 4) {
    s0 = fmaf(x[d], m[d], s0);
    s1 = fmaf(x[d + 1], m[d + 1], s1);
    s2 = fmaf(x[d + 2], m[d + 2], s2);
    s3 = fmaf(x[d + 3], m[d + 3], s3);
  }
  return (s0 + s1) + (s2 + s3);
}

using attn::first_shared;  // (ops/cuda/attention_tiles.h: the varlen mask applies the same rule)

// Bitmap words per token: none where every token has one cluster per side
// (k = 1 on both: a pair's one shared cluster is its first), else a bit per
// cluster of the token's own head (stacked heads share no cluster).
inline int64_t bitmap_words(int64_t q_choices, int64_t k_choices, int64_t per_head) {
  return q_choices == 1 && k_choices == 1 ? 0 : (per_head + 63) / 64;
}
// Whether query t and key u count in cluster c: its first shared one.
SY_HD inline bool counts_in(const Head& h, int64_t t, int64_t u, int64_t c) {
  return h.W == 0 || first_shared(h.qs.bits + t * h.W, h.ks.bits + u * h.W, c % h.K);
}

// ---- preparation, per side ------------------------------------------------

// Assignment a: its kept row's token and cluster.
struct MemberRows {
  const int32_t *group, *slot, *offset;
  int64_t k;
  int32_t *item, *row_group;
  SY_HD void operator()(int64_t a) const {
    if (slot[a] < 0) return;
    const int64_t r = int64_t{offset[group[a]]} + slot[a];
    item[r] = static_cast<int32_t>(a / k);
    row_group[r] = group[a];
  }
};

// Token t: its W bitmap words, bit c % K for cluster c (one owner, no atomics).
struct MemberBits {
  const int32_t *group, *slot;
  int64_t k, K, W;
  uint64_t* bits;
  SY_HD void operator()(int64_t t) const {
    uint64_t* b = bits + t * W;
    for (int64_t w = 0; w < W; ++w) b[w] = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t a = t * k + j;
      if (slot[a] >= 0) b[group[a] % K / 64] |= uint64_t{1} << (group[a] % K % 64);
    }
  }
};

// ---- walks over a cluster's pairs -----------------------------------------

// The keys u of cluster c that count with query t, in position order.
struct KeyWalk {
  const Head& h;
  int64_t c, t, j, end;
  SY_HD KeyWalk(const Head& head, int64_t cluster, int64_t query)
      : h(head), c(cluster), t(query), j(head.ks.offset[cluster]), end(head.ks.offset[cluster + 1]) {}
  // The next key, or -1.
  SY_HD int64_t next() {
    while (j < end) {
      const int64_t u = h.ks.item[j++];
      if (u > t) break;  // keys in position order: none of the rest is allowed
      if (counts_in(h, t, u, c)) return u;
    }
    j = end;
    return -1;
  }
};

// The queries t of cluster c that count with key u, in position order.
struct QueryWalk {
  const Head& h;
  int64_t c, u, j, end;
  SY_HD QueryWalk(const Head& head, int64_t cluster, int64_t key)
      : h(head), c(cluster), u(key), j(head.qs.offset[cluster]), end(head.qs.offset[cluster + 1]) {
    int64_t hi = end;  // first row with position >= u (rows in position order)
    while (j < hi) {
      const int64_t mid = j + (hi - j) / 2;
      if (h.qs.item[mid] < u)
        j = mid + 1;
      else
        hi = mid;
    }
  }
  SY_HD int64_t next() {
    while (j < end) {
      const int64_t t = h.qs.item[j++];
      if (counts_in(h, t, u, c)) return t;
    }
    return -1;
  }
};

// ---- a warp a row ----------------------------------------------------------
// The per-row functions below that walk a row's pairs (ForwardRow,
// BackwardQueryRow, BackwardKeyRow; ops/cuda/sparse_attention_rows.h's too)
// run on a warp W each: lane l holds the elements d = l + 32 v, v < V, of
// every D-row it reads (V = lane_values(D): D <= 32 V), and a dot product is
// each lane's FMAs over its elements, then W::sum, the butterfly over the 32
// lanes (every lane ends with the same bits: ops/cuda/common.cuh's warp_sum).
// The walks over a row's pairs are the same on every lane, so every lane
// makes every sum. (One thread a row read each D-row serially, its warp's
// other threads' rows scattered beside it: latency-bound.)
constexpr int kMaxLaneValues = 16;  // D <= 512

// The V for D: 1, 2, 4, 8 or 16 (a power of two: few instantiations); 0
// past 512.
SY_HD inline int lane_values(int64_t D) {
  int v = 1;
  while (32 * v < D && v < kMaxLaneValues) v *= 2;
  return 32 * v >= D ? v : 0;
}

template <int V, class W>
SY_HD float warp_dot(const W& w, const float (&a)[V], const float* b, int64_t D) {
  float s = 0.f;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t d = w.lane() + 32 * v;
    if (d < D) s = fmaf(a[v], b[d], s);
  }
  return w.sum(s);
}

// A row's elements of this lane (0 past D).
template <int V, class W>
SY_HD void lane_load(const W& w, float (&x)[V], const float* row, int64_t D) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t d = w.lane() + 32 * v;
    x[v] = d < D ? row[d] : 0.f;
  }
}

// A lane's share of one row's online softmax over its keys, a key at a time
// (FlashAttention's rescaling): m the running max, l the running sum, acc
// the lane's elements of sum_j exp(s_j - m) v_j.
template <int V>
struct OnlineRow {
  float acc[V] = {};
  float m = -INFINITY, l = 0.f;
  template <class W>
  SY_HD void add(const W& w, float s, const float* vrow, int64_t D) {
    const float mn = fmaxf(m, s);
    // (m -inf: nothing to rescale yet; mn -inf: every score so far -inf, whose
    // weight is 0, as the two-pass softmax had it, not exp(-inf + inf) = NaN)
    const float c = m == -INFINITY ? 0.f : expf(m - mn);
    const float e = mn == -INFINITY ? 0.f : expf(s - mn);
    l = l * c + e;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t d = w.lane() + 32 * v;
      if (d < D) acc[v] = fmaf(e, vrow[d], acc[v] * c);
    }
    m = mn;
  }
  // o = acc / l (0 without keys), and lse = m + log l (-inf) by lane 0.
  template <class W>
  SY_HD void write(const W& w, bool empty, float* o, float* lse, int64_t D) const {
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int64_t d = w.lane() + 32 * v;
      if (d < D) o[d] = empty ? 0.f : acc[v] / l;
    }
    if (w.lane() == 0) *lse = empty ? -INFINITY : m + logf(l);
  }
};

// A pair's a = exp(s - lse) and ds = a (dout . v - Delta) / sqrt(D) from the
// lane's shares of the rows it holds (x, y) and the rows it reads (xr, yr):
// a query's (q, dout) against a key's rows (k, v), or a key's (k, v) against
// a query's (q, dout). FlashAttention's backward.
struct PairGrad {
  float a, ds;
};
template <int V, class W>
SY_HD PairGrad warp_pair_grad(const W& w, const float (&x)[V], const float (&y)[V], const float* xr, const float* yr,
                              float lse, float delta, float scale, int64_t D) {
  const float a = expf(warp_dot(w, x, xr, D) * scale - lse);
  return {a, a * (warp_dot(w, y, yr, D) - delta) * scale};
}

// acc[v] += f * row[d] on this lane's elements.
template <int V, class W>
SY_HD void lane_fma(const W& w, float (&acc)[V], float f, const float* row, int64_t D) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t d = w.lane() + 32 * v;
    if (d < D) acc[v] = fmaf(f, row[d], acc[v]);
  }
}
// out[d] = acc[v] on this lane's elements (Add: out[d] += acc[v]).
template <bool Add, int V, class W>
SY_HD void lane_store(const W& w, const float (&acc)[V], float* out, int64_t D) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int64_t d = w.lane() + 32 * v;
    if (d < D) out[d] = Add ? out[d] + acc[v] : acc[v];
  }
}

// f(std::integral_constant<int, V>) for V = lane_values(D) (D <= 512; a
// generic lambda takes V as decltype(arg)::value).
template <class F>
void with_lane_values(int64_t D, const F& f) {
  switch (lane_values(D)) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    default: throw std::logic_error("with_lane_values: head dim " + std::to_string(D) + " past 512 (callers refuse it)");
  }
}

// Kept rows of token t on one side, and their pair counts summed.
SY_HD inline bool is_member(const Side& s, int64_t t) {
  for (int64_t j = 0; j < s.k; ++j)
    if (s.row(t, j) >= 0) return true;
  return false;
}
SY_HD inline int64_t pair_count(const Side& s, int64_t t, const int32_t* cnt_part) {
  int64_t n = 0;
  for (int64_t j = 0; j < s.k; ++j) {
    const int64_t r = s.row(t, j);
    if (r >= 0) n += cnt_part[r];
  }
  return n;
}

// ---- forward --------------------------------------------------------------

struct ForwardBuffers {
  float* o_part;     // (query rows, D) o_c
  float* lse_part;   // (query rows) lse_c
  int32_t* cnt_part; // (query rows) pairs of the row
  float* o;          // (T, D)
  float* lse;        // (T)
  int64_t* pairs;    // (T) pairs of each query (its key set's size)
};

// Query row r: attention of its token over its cluster's pairs, an online
// softmax (FlashAttention's rescaling, a key at a time) on a warp.
template <int V>
struct ForwardRow {
  Head h;
  ForwardBuffers b;
  template <class W>
  SY_HD void operator()(const W& w, int64_t r) const {
    const int64_t t = h.qs.item[r], c = h.qs.row_group[r], D = h.D;
    float q[V];
    lane_load(w, q, h.q + t * D, D);
    OnlineRow<V> row;
    int32_t n = 0;
    KeyWalk walk(h, c, t);
    for (int64_t u; (u = walk.next()) >= 0; ++n) row.add(w, warp_dot(w, q, h.k + u * D, D) * h.scale, h.v + u * D, D);
    row.write(w, n == 0, b.o_part + r * D, b.lse_part + r, D);
    if (w.lane() == 0) b.cnt_part[r] = n;
  }
};

// Query t: the merged lse and the size of its key set.
struct ForwardQuery {
  Head h;
  ForwardBuffers b;
  SY_HD void operator()(int64_t t) const {
    if (!is_member(h.qs, t)) {
      b.lse[t] = -INFINITY;
      b.pairs[t] = 0;
      return;
    }
    const int64_t n = pair_count(h.qs, t, b.cnt_part);
    if (n == 0) {  // no allowed key: attends to itself
      b.lse[t] = dot(h.q + t * h.D, h.k + t * h.D, h.D) * h.scale;
      b.pairs[t] = 1;
      return;
    }
    float M = -INFINITY;
    for (int64_t j = 0; j < h.qs.k; ++j) {
      const int64_t r = h.qs.row(t, j);
      if (r >= 0 && b.cnt_part[r] > 0) M = fmaxf(M, b.lse_part[r]);
    }
    float L = 0.f;
    for (int64_t j = 0; j < h.qs.k; ++j) {
      const int64_t r = h.qs.row(t, j);
      if (r >= 0 && b.cnt_part[r] > 0) L += expf(b.lse_part[r] - M);
    }
    b.lse[t] = M + logf(L);
    b.pairs[t] = n;
  }
};

// Element i = t * D + d of o (after ForwardQuery).
struct ForwardOut {
  Head h;
  ForwardBuffers b;
  SY_HD void operator()(int64_t i) const {
    const int64_t t = i / h.D, d = i % h.D;
    if (b.pairs[t] == 0) {
      b.o[i] = 0.f;
      return;
    }
    if (pair_count(h.qs, t, b.cnt_part) == 0) {
      b.o[i] = h.v[i];
      return;
    }
    float acc = 0.f;
    for (int64_t j = 0; j < h.qs.k; ++j) {
      const int64_t r = h.qs.row(t, j);
      if (r >= 0 && b.cnt_part[r] > 0) acc += expf(b.lse_part[r] - b.lse[t]) * b.o_part[r * h.D + d];
    }
    b.o[i] = acc;
  }
};

// Query t writes its key set at idx[off[t] .. off[t+1]): its clusters' pairs
// in ascending cluster order (each in position order), or itself. With
// sort_key, also (t << sort_bits) | u per pair for the sort into position order.
struct FillKeys {
  Head h;
  const int32_t* cnt_part;
  const int64_t* off;  // (T + 1)
  int32_t* idx;
  uint64_t* sort_key;  // or null
  int sort_bits;
  SY_HD void put(int64_t p, int64_t t, int64_t u) const {
    idx[p] = static_cast<int32_t>(u);
    if (sort_key) sort_key[p] = (static_cast<uint64_t>(t) << sort_bits) | static_cast<uint64_t>(u);
  }
  SY_HD void operator()(int64_t t) const {
    int64_t p = off[t];
    if (off[t + 1] == p) return;  // in no cluster
    if (pair_count(h.qs, t, cnt_part) == 0) {
      put(p, t, t);
      return;
    }
    for (int64_t j = 0; j < h.qs.k; ++j) {
      const int64_t r = h.qs.row(t, j);
      if (r < 0) continue;
      KeyWalk w(h, h.qs.row_group[r], t);
      for (int64_t u; (u = w.next()) >= 0;) put(p++, t, u);
    }
  }
};

// ---- backward -------------------------------------------------------------

struct BackwardBuffers {
  const float* dout;  // (T, D)
  const float* o;     // (T, D) the forward's
  const float* lse;   // (T) the forward's (merged)
  float* delta;       // (T) dout_t . o_t
  float* dq_part;     // (query rows, D)
  int32_t* cnt_part;  // (query rows)
  float* dk_part;     // (key rows, D)
  float* dv_part;     // (key rows, D)
  int32_t* self;      // (T) 1 where the query attends to itself
  float* self_a;      // (T) that pair's a
  float* self_ds;     // (T) and ds
  float *dq, *dk, *dv;  // (T, D), accumulate
};

struct BackwardDelta {
  Head h;
  BackwardBuffers b;
  SY_HD void operator()(int64_t t) const { b.delta[t] = dot(b.dout + t * h.D, b.o + t * h.D, h.D); }
};

// Query row r: dq_c = sum over its cluster's pairs of ds k_u, on a warp.
template <int V>
struct BackwardQueryRow {
  Head h;
  BackwardBuffers b;
  template <class W>
  SY_HD void operator()(const W& w, int64_t r) const {
    const int64_t t = h.qs.item[r], c = h.qs.row_group[r], D = h.D;
    float q[V], g[V], dq[V] = {};
    lane_load(w, q, h.q + t * D, D);
    lane_load(w, g, b.dout + t * D, D);
    int32_t n = 0;
    KeyWalk walk(h, c, t);
    for (int64_t u; (u = walk.next()) >= 0; ++n) {
      const PairGrad p = warp_pair_grad(w, q, g, h.k + u * D, h.v + u * D, b.lse[t], b.delta[t], h.scale, D);
      lane_fma(w, dq, p.ds, h.k + u * D, D);
    }
    lane_store<false>(w, dq, b.dq_part + r * D, D);
    if (w.lane() == 0) b.cnt_part[r] = n;
  }
};

// Query t: the self pair of a member with no pair (after BackwardQueryRow).
struct BackwardQuery {
  Head h;
  BackwardBuffers b;
  SY_HD void operator()(int64_t t) const {
    b.self[t] = 0;
    b.self_a[t] = 0.f;
    b.self_ds[t] = 0.f;
    if (!is_member(h.qs, t) || pair_count(h.qs, t, b.cnt_part) > 0) return;
    const float* q = h.q + t * h.D;
    const float a = expf(dot(q, h.k + t * h.D, h.D) * h.scale - b.lse[t]);
    b.self[t] = 1;
    b.self_a[t] = a;
    b.self_ds[t] = a * (dot(b.dout + t * h.D, h.v + t * h.D, h.D) - b.delta[t]) * h.scale;
  }
};

// Element i = t * D + d of dq.
struct BackwardDq {
  Head h;
  BackwardBuffers b;
  SY_HD void operator()(int64_t i) const {
    const int64_t t = i / h.D, d = i % h.D;
    float acc = 0.f;
    for (int64_t j = 0; j < h.qs.k; ++j) {
      const int64_t r = h.qs.row(t, j);
      if (r >= 0) acc += b.dq_part[r * h.D + d];
    }
    if (b.self[t]) acc += b.self_ds[t] * h.k[i];
    b.dq[i] += acc;
  }
};

// Key row r: dk_c = sum ds q_t, dv_c = sum a dout_t over its cluster's
// pairs, on a warp.
template <int V>
struct BackwardKeyRow {
  Head h;
  BackwardBuffers b;
  template <class W>
  SY_HD void operator()(const W& w, int64_t r) const {
    const int64_t u = h.ks.item[r], c = h.ks.row_group[r], D = h.D;
    float k[V], vv[V], dk[V] = {}, dv[V] = {};
    lane_load(w, k, h.k + u * D, D);
    lane_load(w, vv, h.v + u * D, D);
    QueryWalk walk(h, c, u);
    for (int64_t t; (t = walk.next()) >= 0;) {
      const PairGrad p = warp_pair_grad(w, k, vv, h.q + t * D, b.dout + t * D, b.lse[t], b.delta[t], h.scale, D);
      lane_fma(w, dv, p.a, b.dout + t * D, D);
      lane_fma(w, dk, p.ds, h.q + t * D, D);
    }
    lane_store<false>(w, dk, b.dk_part + r * D, D);
    lane_store<false>(w, dv, b.dv_part + r * D, D);
  }
};

// Element i = u * D + d of dk and dv.
struct BackwardDkDv {
  Head h;
  BackwardBuffers b;
  SY_HD void operator()(int64_t i) const {
    const int64_t u = i / h.D, d = i % h.D;
    float ak = 0.f, av = 0.f;
    for (int64_t j = 0; j < h.ks.k; ++j) {
      const int64_t r = h.ks.row(u, j);
      if (r < 0) continue;
      ak += b.dk_part[r * h.D + d];
      av += b.dv_part[r * h.D + d];
    }
    if (b.self[u]) {
      ak += b.self_ds[u] * h.q[i];
      av += b.self_a[u] * b.dout[i];
    }
    b.dk[i] += ak;
    b.dv[i] += av;
  }
};

// ---- the step sequences ----------------------------------------------------
// run(n, f) calls f(i) for every i < n (a kernel launch on the GPU, a loop in
// the host test), warps(n, f) calls f(w, i) for every i < n on a warp w of its
// own (a launch of warps; 32 host threads a warp in the host test), each step
// after the previous one has finished. V = lane_values(h.D).

// Rows and bitmaps of one side: item, row_group (rows), bits (T, W; none for W = 0).
template <class Run>
void side_steps(const Run& run, const int32_t* group, const int32_t* slot, const int32_t* offset, int64_t T, int64_t k,
                int64_t K, int64_t W, int32_t* item, int32_t* row_group, uint64_t* bits) {
  run(T * k, MemberRows{group, slot, offset, k, item, row_group});
  if (W > 0) run(T, MemberBits{group, slot, k, K, W, bits});
}

template <int V, class Run, class Warps>
void forward_steps(const Run& run, const Warps& warps, const Head& h, int64_t query_rows, const ForwardBuffers& b) {
  warps(query_rows, ForwardRow<V>{h, b});
  run(h.T, ForwardQuery{h, b});
  run(h.T * h.D, ForwardOut{h, b});
}

template <int V, class Run, class Warps>
void backward_steps(const Run& run, const Warps& warps, const Head& h, int64_t query_rows, int64_t key_rows,
                    const BackwardBuffers& b) {
  run(h.T, BackwardDelta{h, b});
  warps(query_rows, BackwardQueryRow<V>{h, b});
  run(h.T, BackwardQuery{h, b});
  run(h.T * h.D, BackwardDq{h, b});
  warps(key_rows, BackwardKeyRow<V>{h, b});
  run(h.T * h.D, BackwardDkDv{h, b});
}

// Key set offsets (T + 1) from the pair counts of the queries: an exclusive scan.
inline std::vector<int64_t> key_offsets(const std::vector<int64_t>& pairs) {
  std::vector<int64_t> off(pairs.size() + 1, 0);
  for (size_t t = 0; t < pairs.size(); ++t) off[t + 1] = off[t] + pairs[t];
  return off;
}

// Bits that hold a position 0..T-1 (the sort key is (t << bits) | u).
inline int position_bits(int64_t T) {
  int b = 0;
  while (b < 62 && (int64_t{1} << b) < T) ++b;
  return b;
}

}  // namespace sy::ops::routed
