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

// The CPU reference (ops/cpu/heads.cc) and the CUDA kernels (ops/cuda/heads.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void split_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0);
  void merge_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0);
)

}  // namespace sy::ops
