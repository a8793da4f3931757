// Attention of one new token against a key/value cache (autoregressive
// decoding, runtime/generate.h): the last row of causal attention
// (ops/attention.h) without recomputing the rows before it.
//
//   o_h = sum_{j < n} a_{h,j} v_{g,j},   a_{h,.} = softmax_j(q_h . k_{g,j} / sqrt(D)),   g = h / (H / G)
//
// q (H * D): the new token's query heads, rotated where the model uses RoPE.
// k, v (>= n, G * D): the cache, row j the key (value) heads of position j
// (rows 0 .. n-1 read, the new token's own among them). o (H * D). With
// G < H, query head h reads key/value head h / (H / G) (grouped-query
// attention, ops/heads.h). f32. The scores' maximum is subtracted before
// the exponentials, as in the training kernels' online softmax. Host only:
// generation runs on the CPU (examples/sample).
#pragma once
#include "core/tensor.h"

namespace sy::ops {

struct DecodeAttentionArgs {
  Tensor& o;        // (H * D)
  const Tensor& q;  // (H * D)
  const Tensor& k;  // (rows >= n, G * D)
  const Tensor& v;  // (rows >= n, G * D)
  int64_t n;        // cached positions attended, >= 1
  int64_t heads;    // H
  int64_t kv_heads; // G, dividing H
};

void decode_attention(Ctx& ctx, const DecodeAttentionArgs& a);

namespace cpu {
void decode_attention(Ctx& ctx, const DecodeAttentionArgs& a);
}  // namespace cpu

}  // namespace sy::ops
