// Block top-k attention (ops/sparse_attention.h, block_topk_keysets) packed
// for the tiled varlen flash kernels (ops/cuda/attention_varlen.h): the
// key-block-outer form. Plain functions of one token, pair, row or element;
// ops/cuda/sparse_attention.cu gives each call its own thread, and
// tests/block_topk_pack_test.cc runs the same steps on the host (the varlen
// kernels replaced by the CPU's sparse attention over the pairs their flags
// allow) against the CPU reference.
//
// Query t (own block o = t / block) attends to keep(t) = min(topk, o) chosen
// earlier blocks, whole, and to its own block up to t. Key block b becomes
// one varlen segment:
//   rows [seg[b], seg[b] + L_b)        block b's L_b tokens, query and key rows
//                                       (causal among themselves: the own-block part)
//   rows [seg[b] + L_b, seg[b + 1])    a query row for every t that chose b, by position
// with the key prefix key_len[b] = L_b (attn::MemberMask): a query row sees
// the block's keys only, all of them (they precede t), and a key tile costs
// nothing past the prefix. Each (query, key) pair of the key sets lies in
// exactly one segment, so no pair counts twice.
//   pairs    e = pair_offset(t) + j for t's j-th chosen block (block order,
//            as the key sets list them), sorted stably by (block, t): the
//            inversion to per-block query lists; fs = segment_starts over it
//   rows     own row of t: t + fs[o] (segment o starts at o block + fs[o]);
//            the pair at sorted place p of block b: seg[b] + L_b + p - fs[b]
//   forward  the varlen kernels give each row o_r, lse_r; t's rows (its
//            pairs in block order, then its own row) merge exactly:
//              lse = log sum_r e^{lse_r},  o = sum_r e^{lse_r - lse} o_r
//   backward dout, o, lse of the token on every row (the merged ones: the
//            pairs' probabilities are those of the union); dq_t sums t's rows'
//            dq in the same order; dk_t, dv_t come from t's own row alone (the
//            only key row of t).
// Every row has at least one key (a pair row its whole chosen block, an own
// row itself), so every lse_r is finite.
#pragma once
#include <math.h>

#include <cstdint>

#include "ops/cuda/routed_attention_rows.h"  // SY_HD

namespace sy::ops::blocktopk {

struct Shape {
  int64_t T, block, topk;
  SY_HD int64_t blocks() const { return (T + block - 1) / block; }
  SY_HD int64_t block_len(int64_t b) const { return T - b * block < block ? T - b * block : block; }
  SY_HD int64_t keep(int64_t t) const { return t / block < topk ? t / block : topk; }
  // Chosen blocks of the queries before t (t = T: all of them).
  SY_HD int64_t pair_offset(int64_t t) const {
    const int64_t own = t / block, r = t % block;
    const int64_t full = own <= topk ? own * (own - 1) / 2 : topk * (topk - 1) / 2 + (own - topk) * topk;
    return block * full + r * keep(t);
  }
  SY_HD int64_t pairs() const { return pair_offset(T); }
  SY_HD int64_t rows() const { return T + pairs(); }
};

// Token t: its pairs' sort keys (block << pos_bits | t) and values (the pair
// index), the block read from its key set (off, idx: chosen blocks whole, in
// block order, then its own block).
struct PairKeys {
  Shape s;
  const int64_t* off;
  const int32_t* idx;
  int pos_bits;
  uint64_t* key;
  int32_t* value;
  SY_HD void operator()(int64_t t) const {
    const int64_t e0 = s.pair_offset(t);
    for (int64_t j = 0; j < s.keep(t); ++j) {
      int64_t b = idx[off[t] + j * s.block] / s.block;
      // Finite scores always give keep(t) earlier blocks; NaN ones may give
      // fewer (BlockTopkKeys takes at most keep), and the entry read here is
      // then not a chosen block: any earlier block keeps the rows in bounds
      // (the head's output is NaN anyway).
      if (b < 0 || b >= t / s.block) b = 0;
      key[e0 + j] = static_cast<uint64_t>(b) << pos_bits | static_cast<uint64_t>(t);
      value[e0 + j] = static_cast<int32_t>(e0 + j);
    }
  }
};

// Block b <= blocks(): where its segment starts, and its key prefix.
struct Segments {
  Shape s;
  const int32_t* fs;  // (blocks + 1) the first sorted pair of each block
  int32_t *seg, *key_len;
  SY_HD void operator()(int64_t b) const {
    const int64_t before = b * s.block < s.T ? b * s.block : s.T;
    seg[b] = static_cast<int32_t>(before + fs[b]);
    if (b < s.blocks()) key_len[b] = static_cast<int32_t>(s.block_len(b));
  }
};

struct Rows {
  int32_t *row_token, *is_query, *is_key;  // (rows)
  int32_t *own_row, *pair_row;             // (T), (pairs)
};

// Token t: its own row.
struct OwnRows {
  Shape s;
  const int32_t* fs;
  Rows r;
  SY_HD void operator()(int64_t t) const {
    const int64_t p = t + fs[t / s.block];
    r.row_token[p] = static_cast<int32_t>(t);
    r.is_query[p] = 1;
    r.is_key[p] = 1;
    r.own_row[t] = static_cast<int32_t>(p);
  }
};

// Sorted pair p: its query row in its block's segment.
struct PairRows {
  Shape s;
  const uint64_t* sorted_key;
  const int32_t* sorted_value;
  const int32_t *fs, *seg;
  int pos_bits;
  Rows r;
  SY_HD void operator()(int64_t p) const {
    const int64_t b = static_cast<int64_t>(sorted_key[p] >> pos_bits);
    const int64_t t = static_cast<int64_t>(sorted_key[p] & ((uint64_t{1} << pos_bits) - 1));
    const int64_t row = seg[b] + s.block_len(b) + (p - fs[b]);
    r.row_token[row] = static_cast<int32_t>(t);
    r.is_query[row] = 1;
    r.is_key[row] = 0;
    r.pair_row[sorted_value[p]] = static_cast<int32_t>(row);
  }
};

// Token t's packed rows in merge order: its pairs (block order), then its own.
struct TokenRows {
  Shape s;
  const int32_t *own_row, *pair_row;
  SY_HD int64_t count(int64_t t) const { return s.keep(t) + 1; }
  SY_HD int64_t row(int64_t t, int64_t j) const {
    return j < s.keep(t) ? pair_row[s.pair_offset(t) + j] : own_row[t];
  }
};

// Element i = t * D + d of o, and lse_t at d = 0: t's rows merged. E: the
// elements' type (packed_rows.h's F32, or common.cuh's Bf16 for
// the tensor-core kernels), f32 arithmetic either way.
template <class E>
struct MergeForward {
  using T = typename E::T;
  TokenRows tr;
  const T* out_p;      // (rows, D)
  const float* lse_p;  // (rows)
  int64_t D;
  T* o;
  float* lse;
  SY_HD void operator()(int64_t i) const {
    const int64_t t = i / D, d = i % D, n = tr.count(t);
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) m = fmaxf(m, lse_p[tr.row(t, j)]);
    float sum = 0.f;
    for (int64_t j = 0; j < n; ++j) sum += expf(lse_p[tr.row(t, j)] - m);
    const float l = m + logf(sum);
    float acc = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t r = tr.row(t, j);
      acc += expf(lse_p[r] - l) * E::load(out_p[r * D + d]);
    }
    o[i] = E::store(acc);
    if (d == 0) lse[t] = l;
  }
};

// Element i = t * D + d: dq, dk, dv accumulate t's rows' packed gradients.
template <class E>
struct ScatterBackward {
  using T = typename E::T;
  TokenRows tr;
  const T* dqkv_p;  // (rows, 3D)
  int64_t D;
  T *dq, *dk, *dv;
  SY_HD void operator()(int64_t i) const {
    const int64_t t = i / D, d = i % D;
    float g = 0.f;
    for (int64_t j = 0; j < tr.count(t); ++j) g += E::load(dqkv_p[tr.row(t, j) * 3 * D + d]);
    dq[i] = E::store(E::load(dq[i]) + g);
    const T* own = dqkv_p + int64_t{tr.own_row[t]} * 3 * D;
    dk[i] = E::store(E::load(dk[i]) + E::load(own[D + d]));
    dv[i] = E::store(E::load(dv[i]) + E::load(own[2 * D + d]));
  }
};

}  // namespace sy::ops::blocktopk
