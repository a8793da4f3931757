// Row permutations by an index (the expert exchange's reorders between the
// source-major layout of received rows and the expert-major layout the
// expert GEMMs read):
//
//   gather_rows:   out[i] = in[index[i]]     (any rows of in, repeats too:
//                                              the deduplicated dispatch's
//                                              expert rows from token rows)
//   scatter_rows:  out[index[i]] = in[i]      (index a permutation: no two i
//                                              write one row, so no atomics)
// Shapes: gather: out (R, D), in (S, D), index (R) with values in [0, S);
// scatter: in, out (R, D), index (R); any dtype, out's the same as in's;
// index i64.
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
