// Head layout changes for attention kernels that work one head at a time:
//
//   split_heads:  out[h, n, :] = in[n, col0 + h*D : col0 + (h+1)*D]     out (H, N, D), in (N, W)
//   merge_heads:  out[n, col0 + h*D : col0 + (h+1)*D] = in[h, n, :]     (overwrites those columns)
//
// With N = B*T, out.rows(h, h+1) is head h of every sequence and rows
// [b*T, (b+1)*T) of it one sequence's head: contiguous (T, D) blocks. q, k, v
// of a packed (N, 3C) qkv are split_heads at col0 = 0, C, 2C; the backward of
// a split is the merge of the gradients, and the other way round.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

void split_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0);
void merge_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0);

// Grouped-query attention (Ainslie et al. 2023, GQA): a projection row
// [q (H heads) | k (G heads) | v (G heads)] of head size D, in which query
// head h shares key and value head h / r (r = H / G), widened to the packed
// (N, 3 H D) row of multi-head attention that the attention kernels read,
// and back:
//
//   expand_kv_heads:  out[n, q] = in[n, q],  out[n, k_h] = in[n, k_{h/r}],  out[n, v_h] = in[n, v_{h/r}]
//   reduce_kv_heads:  out[n, q] = in[n, q],  out[n, k_j] = sum_{h = j r}^{j r + r - 1} in[n, k_h]  (v alike)
//
// in (N, (H + 2G) D) -> out (N, 3 H D) for expand, the other way for reduce,
// which is expand's backward: a shared head's gradient is the sum of its
// query heads', added in the order of h. f32, or bf16 (in and out alike;
// reduce adds in f32 and rounds once).
struct KvHeads {
  int64_t heads, kv_heads, head_dim;  // H, G (dividing H), D
};
void expand_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& s);
void reduce_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& s);

// The CPU reference (ops/cpu/heads.cc) and the CUDA kernels (ops/cuda/heads.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void split_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0);
  void merge_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0);
  void expand_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& s);
  void reduce_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& s);
)

}  // namespace sy::ops
