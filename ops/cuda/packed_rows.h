// What the packed attention paths share (routed attention over clusters,
// ops/cuda/routed_union_pack.h; block top-k, ops/cuda/block_topk_pack.h):
// the element types, and the per-element gathers into packed rows for the
// tiled varlen flash kernels (ops/cuda/attention_varlen.h), written as plain
// functions of one row or element so the host tests can run them. SY_HD as
// in ops/cuda/routed_attention_rows.h.
#pragma once
#include <math.h>

#include <cstdint>

#include "ops/cuda/routed_attention_rows.h"  // SY_HD

namespace sy::ops::routed {

// The size of a query's key set from n = its pairs over its clusters (-1: in
// no query cluster, 0: a lone member, which attends to itself).
SY_HD inline int64_t key_set_size(int64_t n) { return n < 0 ? 0 : (n == 0 ? 1 : n); }

// How a packed path reads and writes its tensors' elements: f32 (here), or
// bf16 (ops/cuda/common.cuh's Bf16: the tensor-core kernels).
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

// Token t: the size of its key set from n (key_set_size).
struct KeySetSizes {
  const int32_t* n;
  int64_t* pairs;     // (T) or null
  double* pairs_f64;  // (T) or null: the same, for a fixed-order sum
  SY_HD void operator()(int64_t t) const {
    if (pairs) pairs[t] = key_set_size(n[t]);
    if (pairs_f64) pairs_f64[t] = static_cast<double>(key_set_size(n[t]));
  }
};

// Element i = p * D + d of the packed (R, D) dout and o, and lse_p at d = 0
// (query rows, flag 1 or 2: the token's lse; other rows 0, so that even the
// masked terms the kernels compute are finite).
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

}  // namespace sy::ops::routed
