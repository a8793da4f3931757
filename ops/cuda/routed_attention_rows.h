// Routed attention's attention on CUDA, written as plain functions of one row
// or one element (equations in ops/routed_attention.h and
// ops/sparse_attention.h). ops/cuda/routed_attention.cu gives every call its
// own thread; tests/routed_attention_rows_test.cc runs the same functions and
// the same step sequences on the host, against the CPU reference, so the
// indexing, the pair rule and both merges are checked on machines without a
// GPU. Nothing here includes CUDA headers: SY_HD is __host__ __device__ under
// nvcc and nothing under a C++ compiler.
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
// Forward (one thread per query row r = (t, c), then per query t, then per
// element of o):
//   rows     two passes over c's keys up to t: m = max s, then
//            l = sum exp(s - m), o_c = sum exp(s - m) v / l; lse_c = m + log l
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
//   query rows   dq_c = sum_u ds_tu k_u over c's pairs of t, and the pair count
//   queries      the self pair of a member with no pair: its a and ds
//   dq           dq_t += sum_c dq_c (ascending) + the self pair's ds k_t
//   key rows     dk_c = sum_t ds_tu q_t, dv_c = sum_t a_tu dout_t over c's pairs of u
//   dk, dv       dk_u += sum_c dk_c (ascending) + self pair; dv likewise
// with ds_tu = a_tu (dout_t . v_u - Delta_t) / sqrt(D), as the CPU's sparse
// backward. Every output has one owner adding in a fixed order: no atomics,
// two runs give the same bits.
#pragma once
#include <math.h>

#include <cstdint>
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

// Query row r: attention of its token over its cluster's pairs.
struct ForwardRow {
  Head h;
  ForwardBuffers b;
  SY_HD void operator()(int64_t r) const {
    const int64_t t = h.qs.item[r], c = h.qs.row_group[r], D = h.D;
    const float* q = h.q + t * D;
    float* o = b.o_part + r * D;
    for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
    float m = -INFINITY;
    int32_t n = 0;
    KeyWalk w1(h, c, t);
    for (int64_t u; (u = w1.next()) >= 0; ++n) m = fmaxf(m, dot(q, h.k + u * D, D) * h.scale);
    b.cnt_part[r] = n;
    if (n == 0) {
      b.lse_part[r] = -INFINITY;
      return;
    }
    float l = 0.f;
    KeyWalk w2(h, c, t);
    for (int64_t u; (u = w2.next()) >= 0;) {
      const float e = expf(dot(q, h.k + u * D, D) * h.scale - m);
      l += e;
      const float* v = h.v + u * D;
      for (int64_t d = 0; d < D; ++d) o[d] += e * v[d];
    }
    for (int64_t d = 0; d < D; ++d) o[d] /= l;
    b.lse_part[r] = m + logf(l);
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

// Query row r: dq_c = sum over its cluster's pairs of ds k_u.
struct BackwardQueryRow {
  Head h;
  BackwardBuffers b;
  SY_HD void operator()(int64_t r) const {
    const int64_t t = h.qs.item[r], c = h.qs.row_group[r], D = h.D;
    const float* q = h.q + t * D;
    const float* g = b.dout + t * D;
    float* dq = b.dq_part + r * D;
    for (int64_t d = 0; d < D; ++d) dq[d] = 0.f;
    int32_t n = 0;
    KeyWalk w(h, c, t);
    for (int64_t u; (u = w.next()) >= 0; ++n) {
      const float* k = h.k + u * D;
      const float a = expf(dot(q, k, D) * h.scale - b.lse[t]);
      const float ds = a * (dot(g, h.v + u * D, D) - b.delta[t]) * h.scale;
      for (int64_t d = 0; d < D; ++d) dq[d] += ds * k[d];
    }
    b.cnt_part[r] = n;
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

// Key row r: dk_c = sum ds q_t, dv_c = sum a dout_t over its cluster's pairs.
struct BackwardKeyRow {
  Head h;
  BackwardBuffers b;
  SY_HD void operator()(int64_t r) const {
    const int64_t u = h.ks.item[r], c = h.ks.row_group[r], D = h.D;
    const float* k = h.k + u * D;
    const float* v = h.v + u * D;
    float* dk = b.dk_part + r * D;
    float* dv = b.dv_part + r * D;
    for (int64_t d = 0; d < D; ++d) dk[d] = dv[d] = 0.f;
    QueryWalk w(h, c, u);
    for (int64_t t; (t = w.next()) >= 0;) {
      const float* q = h.q + t * D;
      const float* g = b.dout + t * D;
      const float a = expf(dot(q, k, D) * h.scale - b.lse[t]);
      const float ds = a * (dot(g, v, D) - b.delta[t]) * h.scale;
      for (int64_t d = 0; d < D; ++d) {
        dv[d] += a * g[d];
        dk[d] += ds * q[d];
      }
    }
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
// the host test), each step after the previous one has finished.

// Rows and bitmaps of one side: item, row_group (rows), bits (T, W; none for W = 0).
template <class Run>
void side_steps(const Run& run, const int32_t* group, const int32_t* slot, const int32_t* offset, int64_t T, int64_t k,
                int64_t K, int64_t W, int32_t* item, int32_t* row_group, uint64_t* bits) {
  run(T * k, MemberRows{group, slot, offset, k, item, row_group});
  if (W > 0) run(T, MemberBits{group, slot, k, K, W, bits});
}

template <class Run>
void forward_steps(const Run& run, const Head& h, int64_t query_rows, const ForwardBuffers& b) {
  run(query_rows, ForwardRow{h, b});
  run(h.T, ForwardQuery{h, b});
  run(h.T * h.D, ForwardOut{h, b});
}

template <class Run>
void backward_steps(const Run& run, const Head& h, int64_t query_rows, int64_t key_rows, const BackwardBuffers& b) {
  run(h.T, BackwardDelta{h, b});
  run(query_rows, BackwardQueryRow{h, b});
  run(h.T, BackwardQuery{h, b});
  run(h.T * h.D, BackwardDq{h, b});
  run(key_rows, BackwardKeyRow{h, b});
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
