// Row permutations by an index (the expert exchange's reorders between the
// source-major layout of received rows and the expert-major layout the
// expert GEMMs read):
//
//   gather_rows:   out[i] = in[index[i]]
//   scatter_rows:  out[index[i]] = in[i]      (index a permutation: no two i
//                                              write one row, so no atomics)
// Shapes: in, out (R, D) any dtype of equal size; index (R) i64.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

void gather_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index);
void scatter_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index);

// The CPU reference (ops/cpu/permute.cc) and the CUDA kernels (ops/cuda/permute.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void gather_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index);
  void scatter_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index);
)

}  // namespace sy::ops
