// Self-attention over variable-length segments of packed rows, restricted to
// member rows: the flash kernels of ops/cuda/attention_kernels.cuh with a variable-
// length geometry and attn::MemberMask (ops/cuda/attention_tiles.h). Internal
// to ops/cuda: the tiled path for routed attention's clusters, where each
// cluster is packed as the union of its queries and keys in position order,
// a row flagged as a query, a key, or both:
//
//   segment b = packed rows [seg[b], seg[b+1]), in position order
//   row i attends to row j of its segment iff j <= i, is_query[i], is_key[j]
//   (and, with key_len, j < key_len[b]: segment b's keys are its first rows;
//   with pos, pos[j] <= pos[i] instead of j <= i, and the first-shared rule:
//   attn::MemberMask)
//   out_i = sum_j a_ij v_j, lse_i = log sum_j e^{s_ij}   (none: 0 and -inf)
//
// Shapes: qkv (rows, 3C) as [q | k | v] per row, H heads of C / H; out
// (rows, C); lse (H, rows), f32 (row r of head h at h * rows + r). dqkv
// accumulates. Dtypes and head dims as ops/attention.h on CUDA (f32: 16, 32,
// 64, 128; bf16: 64, 128). max_len bounds every segment's length (the
// size checks). The grid is a work list built on the device per launch
// (attn::tile_work): the tiles that exist, within ceil(rows / tile) +
// segments blocks, so no length is read back and long segments beside short
// ones (unbalanced clusters, block top-k's early blocks) cost no empty blocks.
// The CPU reference of the same pairs is ops::sparse_attention over key sets
// built from the flags (tests/backend_ops/attention_tests.cc).
#pragma once
#include <climits>
#include <cstdint>

#include "core/tensor.h"

namespace sy::ops::cuda {

struct VarlenAttention {
  int64_t segments = 0;  // S
  int64_t max_len = 0;   // >= the longest segment
  int64_t rows = 0;      // seg[S]
  int64_t C = 0, H = 0;  // row width and heads
  const int32_t* seg = nullptr;       // (S + 1), device
  const int32_t* is_query = nullptr;  // (rows), device, 0 or 1 (2: see pos)
  const int32_t* is_key = nullptr;    // (rows), device, 0 or 1 (2: see pos)
  const int32_t* key_len = nullptr;   // (S), device, or null: keys anywhere in a segment
  // Clusters a token can share (routed attention's balanced mode,
  // ops/cuda/routed_union_pack.h): with key_len, segment b holds its keys,
  // then its queries, each in position order; a pair needs pos[j] <= pos[i],
  // and flags of 2 mark the rows whose pairs count only in the first
  // segment that holds both tokens (bitmaps qbits, kbits: (positions, words),
  // bit b % clusters for segment b; words 0: no flags of 2, no bitmaps).
  const int32_t* pos = nullptr;      // (rows), device, or null
  const uint64_t* qbits = nullptr;   // device
  const uint64_t* kbits = nullptr;
  int words = 0;
  int clusters = INT_MAX;  // segments per stacked head (INT_MAX: one head)
  // With pos and words 0: every row of a key prefix is a key and every row
  // after it a query, flag 1 (causal mode's packing): tiles below the
  // diagonal by position skip the element mask (attn::MemberMask).
  bool all_flagged = false;
};

// Whether the tiled kernels (dense and varlen) have a head dim D for dtype
// dt: f32 16, 32, 64, 128; bf16 64, 128 (ops/attention.h).
inline bool tiled_head_dim(DType dt, int64_t D) {
  if (dt == DType::bf16) return D == 64 || D == 128;
  return D == 16 || D == 32 || D == 64 || D == 128;
}

void varlen_attention_forward(Ctx& ctx, const VarlenAttention& v, const Tensor& qkv, Tensor& out, Tensor& lse);
void varlen_attention_backward(Ctx& ctx, const VarlenAttention& v, Tensor& dqkv, const Tensor& dout,
                               const Tensor& qkv, const Tensor& out, const Tensor& lse);

}  // namespace sy::ops::cuda
