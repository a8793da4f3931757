// Non-finite values: how many elements of an f32 tensor are NaN or +-Inf.
// The trainer's non-finite policy asks it of each block's output (to name the
// first layer that went non-finite) and of each gradient.
//
//   count_nonfinite(x) = #{ i : x_i is NaN or +-Inf }        x: any shape, f32
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

int64_t count_nonfinite(Ctx& ctx, const Tensor& x);

// The CPU reference and the CUDA kernel (ops/cuda/finite.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  int64_t count_nonfinite(Ctx& ctx, const Tensor& x);
)

}  // namespace sy::ops
