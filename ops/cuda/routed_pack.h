// Routed attention with one cluster per token on each side (causal mode:
// k = 1 query cluster and k = 1 key cluster), packed for the tiled varlen
// flash kernels (ops/cuda/attention_varlen.h), written as plain functions of
// one token, row or element. ops/cuda/routed_attention.cu gives every call
// its own thread; tests/routed_pack_test.cc runs the same steps on the host
// (the varlen kernels replaced by the CPU's sparse attention over the pairs
// their flags allow) against the CPU reference. SY_HD as in
// ops/cuda/routed_attention_rows.h.
//
// With one cluster per query a pair (t, u) counts in cq(t) alone, so the
// union over clusters needs no merge: cluster c is one varlen segment, the
// union of its queries and keys in position order,
//   token t -> entry 2t     (cq(t), t), a query row; also a key row when ck(t) = cq(t)
//              entry 2t+1   (ck(t), t), a key row, when ck(t) differs
// (a dropped side, or the second entry where the clusters agree, goes to
// cluster K: past the last segment). A stable radix sort on
// cluster << pos_bits | t puts each segment's rows in position order, so the
// varlen mask (row j <= row i, i a query row, j a key row) is the routed
// rule u <= t. segment_starts gives the segment offsets; rows past seg[K]
// belong to no segment. Each token's query row and key row are written by
// the one row that holds them (no atomics).
//
// Around the kernels, per token or element:
//   gather    packed row r = [q | k | v] of its token (every row, so the
//             kernels never read an unwritten value, even where masked)
//   keys      n(t) = keys of cq(t) at positions <= t, by a binary search in
//             the key route's rows (position order); the key set's size is
//             n(t), or 1 (itself) for n(t) = 0, or 0 for a token in no cluster
//   scatter   o_t, lse_t from t's query row; a member with n(t) = 0 attends
//             to itself (o = v_t, lse = q_t . k_t / sqrt(D)); a token in no
//             cluster gets o = 0, lse = -inf (ops/routed_attention.h)
//   backward  the same packing; dout, o, lse gathered per row; dq_t from t's
//             query row, dk_t, dv_t from its key row; the self pair of a lone
//             member adds dout_t to dv_t (its a = 1, ds = a (dout.v - Delta) = 0)
#pragma once
#include <math.h>

#include <cstdint>

#include "ops/cuda/routed_attention_rows.h"  // SY_HD

namespace sy::ops::routed {

// The two routes (k = 1) of one head of one sequence, and the key route's
// rows inverted (row -> token, ops/cuda/routed_attention_rows.h MemberRows).
struct CausalRoutes {
  const int32_t *qgroup, *qslot;           // (T)
  const int32_t *kgroup, *kslot, *koffset;  // (T), (T), (K + 1)
  const int32_t* kitem;                     // (key rows) row -> token, a cluster's rows in position order
  int64_t T, K;

  SY_HD int64_t qcluster(int64_t t) const { return qslot[t] >= 0 ? qgroup[t] : -1; }
  SY_HD int64_t kcluster(int64_t t) const { return kslot[t] >= 0 ? kgroup[t] : -1; }
  // Keys of t's query cluster at positions <= t (-1: t is no query).
  SY_HD int64_t keys_up_to(int64_t t) const {
    const int64_t c = qcluster(t);
    if (c < 0) return -1;
    int64_t lo = koffset[c], hi = koffset[c + 1];  // first row with a position > t
    const int64_t first = lo;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (kitem[mid] <= t)
        lo = mid + 1;
      else
        hi = mid;
    }
    return lo - first;
  }
};

// The size of t's key set from keys_up_to: none, itself, or its keys.
SY_HD inline int64_t key_set_size(int64_t n) { return n < 0 ? 0 : (n == 0 ? 1 : n); }

struct PackBuffers {
  uint64_t* key;        // (2T) cluster << pos_bits | t, before the sort
  int32_t* entry;       // (2T) 2t or 2t + 1
  const uint64_t* sorted_key;
  const int32_t* sorted_entry;  // (2T) after the stable sort
  int32_t *qrow, *krow;         // (T) t's query row and key row, or -1
  int32_t* row_token;           // (R) packed row -> token
  int32_t *is_query, *is_key;   // (R) the varlen flags
  int64_t R;                    // rows packed: query rows + key rows, at least every real row
  int pos_bits;
};

// Token t: its two entries; no row yet.
struct PackEntries {
  CausalRoutes r;
  PackBuffers b;
  SY_HD void operator()(int64_t t) const {
    const int64_t cq = r.qcluster(t), ck = r.kcluster(t);
    const uint64_t none = static_cast<uint64_t>(r.K);
    const uint64_t first = cq >= 0 ? static_cast<uint64_t>(cq) : none;
    const uint64_t second = ck >= 0 && ck != cq ? static_cast<uint64_t>(ck) : none;
    b.key[2 * t] = first << b.pos_bits | static_cast<uint64_t>(t);
    b.key[2 * t + 1] = second << b.pos_bits | static_cast<uint64_t>(t);
    b.entry[2 * t] = static_cast<int32_t>(2 * t);
    b.entry[2 * t + 1] = static_cast<int32_t>(2 * t + 1);
    b.qrow[t] = -1;
    b.krow[t] = -1;
  }
};

// Packed row p (< R, after the sort): its token and flags; the row writes its
// token's qrow / krow (each entry is one row, so one writer each).
struct PackRows {
  CausalRoutes r;
  PackBuffers b;
  SY_HD void operator()(int64_t p) const {
    const int64_t e = b.sorted_entry[p], t = e / 2;
    const int64_t c = static_cast<int64_t>(b.sorted_key[p] >> b.pos_bits);
    b.row_token[p] = static_cast<int32_t>(t);
    if (c >= r.K) {  // past the last segment
      b.is_query[p] = 0;
      b.is_key[p] = 0;
      return;
    }
    const bool query = e % 2 == 0, key = !query || r.kcluster(t) == c;
    b.is_query[p] = query;
    b.is_key[p] = key;
    if (query) b.qrow[t] = static_cast<int32_t>(p);
    if (key) b.krow[t] = static_cast<int32_t>(p);
  }
};

// How the packed path reads and writes its tensors' elements: f32 (here), or
// bf16 (ops/cuda/routed_attention.cu's Bf16: the tensor-core kernels).
struct F32 {
  using T = float;
  static SY_HD float load(float x) { return x; }
  static SY_HD float store(float x) { return x; }
};

template <class E>
SY_HD float dot_of(const typename E::T* a, const typename E::T* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += E::load(a[i]) * E::load(b[i]);
  return s;
}

// Element i of the packed (R, 3D) rows: [q | k | v] of the row's token.
template <class E>
struct GatherQKV {
  using T = typename E::T;
  const T *q, *k, *v;  // (T, D)
  const int32_t* row_token;
  int64_t D;
  T* qkv;  // (R, 3D)
  SY_HD void operator()(int64_t i) const {
    const int64_t p = i / (3 * D), j = i % (3 * D), t = row_token[p];
    const T* src = j < D ? q : (j < 2 * D ? k : v);
    qkv[i] = src[t * D + j % D];
  }
};

// Token t: keys_up_to(t), for the scatter and the lone test.
struct KeyCounts {
  CausalRoutes r;
  int32_t* n;  // (T)
  SY_HD void operator()(int64_t t) const { n[t] = static_cast<int32_t>(r.keys_up_to(t)); }
};

// Token t: the size of its key set from n = keys_up_to.
struct KeySetSizes {
  const int32_t* n;
  int64_t* pairs;     // (T) or null
  double* pairs_f64;  // (T) or null: the same, for a fixed-order sum
  SY_HD void operator()(int64_t t) const {
    if (pairs) pairs[t] = key_set_size(n[t]);
    if (pairs_f64) pairs_f64[t] = static_cast<double>(key_set_size(n[t]));
  }
};

// Element i = t * D + d of o, and lse_t at d = 0.
template <class E>
struct ScatterForward {
  using T = typename E::T;
  const T *q, *k, *v;  // (T, D)
  const int32_t *qrow, *n;
  const T* out_p;      // (R, D): the varlen output
  const float* lse_p;  // (R)
  int64_t D;
  float scale;
  T* o;
  float* lse;
  SY_HD void operator()(int64_t i) const {
    const int64_t t = i / D, d = i % D;
    if (n[t] < 0) {  // in no cluster
      o[i] = E::store(0.f);
      if (d == 0) lse[t] = -INFINITY;
    } else if (n[t] == 0) {  // no allowed key: itself
      o[i] = v[i];
      if (d == 0) lse[t] = dot_of<E>(q + t * D, k + t * D, D) * scale;
    } else {
      o[i] = out_p[int64_t{qrow[t]} * D + d];
      if (d == 0) lse[t] = lse_p[qrow[t]];
    }
  }
};

// Token t writes its key set at idx[off[t] ..): its cluster's keys up to t in
// position order (the key route's rows), or itself.
struct FillCausalKeys {
  CausalRoutes r;
  const int32_t* n;
  const int64_t* off;  // (T + 1)
  int32_t* idx;
  SY_HD void operator()(int64_t t) const {
    if (n[t] < 0) return;
    int32_t* out = idx + off[t];
    if (n[t] == 0) {
      out[0] = static_cast<int32_t>(t);
      return;
    }
    const int32_t* keys = r.kitem + r.koffset[r.qcluster(t)];
    for (int32_t j = 0; j < n[t]; ++j) out[j] = keys[j];
  }
};

// Element i = p * D + d of the packed (R, D) dout and o, and lse_p at d = 0
// (query rows: the token's lse; other rows 0, so that even the masked terms
// the kernels compute are finite).
template <class E>
struct GatherGrad {
  using T = typename E::T;
  const T *dout, *o;  // (T, D)
  const float* lse;   // (T)
  const int32_t *row_token, *is_query;
  int64_t D;
  T *dout_p, *o_p;
  float* lse_p;
  SY_HD void operator()(int64_t i) const {
    const int64_t p = i / D, d = i % D, t = row_token[p];
    dout_p[i] = dout[t * D + d];
    o_p[i] = o[t * D + d];
    if (d == 0) lse_p[p] = is_query[p] ? lse[t] : 0.f;
  }
};

// Element i = t * D + d: dq, dk, dv accumulate the packed gradients of t's
// rows; a lone member's self pair adds dout_t to dv_t.
template <class E>
struct ScatterBackward {
  using T = typename E::T;
  const int32_t *qrow, *krow, *n;
  const T* dqkv_p;  // (R, 3D)
  const T* dout;    // (T, D)
  int64_t D;
  T *dq, *dk, *dv;
  SY_HD void operator()(int64_t i) const {
    const int64_t t = i / D, d = i % D;
    if (qrow[t] >= 0) dq[i] = E::store(E::load(dq[i]) + E::load(dqkv_p[int64_t{qrow[t]} * 3 * D + d]));
    float gv = 0.f;
    if (krow[t] >= 0) {
      const T* g = dqkv_p + int64_t{krow[t]} * 3 * D;
      dk[i] = E::store(E::load(dk[i]) + E::load(g[D + d]));
      gv = E::load(g[2 * D + d]);
    }
    if (n[t] == 0) gv += E::load(dout[i]);
    if (krow[t] >= 0 || n[t] == 0) dv[i] = E::store(E::load(dv[i]) + gv);
  }
};

}  // namespace sy::ops::routed
