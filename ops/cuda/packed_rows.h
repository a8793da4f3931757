// What the packed attention paths share (routed attention over clusters,
// ops/cuda/routed_union_pack.h; block top-k, ops/cuda/block_topk_pack.h):
// the element types, and the per-element gathers into packed rows for the
// tiled varlen flash kernels (ops/cuda/attention_varlen.h), written as plain
// functions of one row or element so the host tests can run them. SY_HD as
// in ops/cuda/routed_attention_rows.h.
#pragma once
#include <math.h>

#include <cstdint>
#include <initializer_list>

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

// V consecutive elements copied as one: on the device one 16- or 8-byte
// load and store (the caller checked the alignment: chunk_elems), on the
// host a loop.
template <class T, int V>
SY_HD inline void copy_chunk(T* dst, const T* src) {
#ifdef __CUDA_ARCH__
  if constexpr (V * sizeof(T) == 16)
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  else if constexpr (V * sizeof(T) == 8)
    *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
  else  // (the host's loop, for other sizes)
#endif
    for (int e = 0; e < V; ++e) dst[e] = src[e];
}

// Elements of type T a gather may copy as one 16-byte chunk: 16 / sizeof(T)
// where D is a multiple of it and every pointer is 16-byte aligned (rows of
// D elements then start aligned), else 1. (The element-wise gathers spent a
// 64-bit division and a 2-byte access per bf16 element.)
template <class T>
inline int chunk_elems(int64_t D, std::initializer_list<const void*> ptrs) {
  constexpr int V = static_cast<int>(16 / sizeof(T));
  if (D % V != 0) return 1;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  return V;
}

// Chunk i of V elements of the packed (R, 3D) rows: [q | k | v] of the
// row's token (D a multiple of V: a chunk lies in one of q, k, v). Items:
// R * 3D / V.
template <class E, int V = 1>
struct GatherQKV {
  using T = typename E::T;
  const T *q, *k, *v;  // (T, D)
  const int32_t* row_token;
  int64_t D;
  T* qkv;  // (R, 3D)
  SY_HD void operator()(int64_t i) const {
    const int64_t per_row = 3 * D / V, p = i / per_row, j = i % per_row * V, t = row_token[p];
    const T* src = j < D ? q : (j < 2 * D ? k : v);
    copy_chunk<T, V>(qkv + p * 3 * D + j, src + t * D + j % D);
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

// Chunk i (elements p * D + d .. + V-1) of the packed (R, D) dout and o,
// and lse_p at d = 0 (query rows, flag 1 or 2: the token's lse; other rows
// 0, so that even the masked terms the kernels compute are finite). Items:
// R * D / V.
template <class E, int V = 1>
struct GatherGrad {
  using T = typename E::T;
  const T *dout, *o;  // (T, D)
  const float* lse;   // (T)
  const int32_t *row_token, *is_query;
  int64_t D;
  T *dout_p, *o_p;
  float* lse_p;
  SY_HD void operator()(int64_t i) const {
    const int64_t per_row = D / V, p = i / per_row, d = i % per_row * V, t = row_token[p];
    copy_chunk<T, V>(dout_p + p * D + d, dout + t * D + d);
    copy_chunk<T, V>(o_p + p * D + d, o + t * D + d);
    if (d == 0) lse_p[p] = is_query[p] ? lse[t] : 0.f;
  }
};

}  // namespace sy::ops::routed
