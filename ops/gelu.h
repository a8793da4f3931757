// GELU, tanh approximation (Hendrycks & Gimpel 2016), applied after the FFN's
// first bias (the bias is added by matmul, as a cuBLASLt BIAS|GELU epilogue would).
//
//   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3*0.044715 x^2)
//
// Shapes: any, y like x. Saved for backward: x. y f32, or bf16 = bf16(y)
// when y feeds a bf16 GEMM (ops/matmul.h takes a bf16 x as already rounded),
// saving that GEMM's pass to round it. An f32 dx accumulates; a bf16 dx is
// written, dx = bf16(dy * dy/dx): the gradient a bf16 GEMM's backward reads
// as it is (its dy), with no zero fill, no f32 copy and no rounding pass in
// between. x and dy f32, or bf16 where a bf16 GEMM wrote them (bf16 mode:
// the FFN's pre-activation and its gradient, runtime/layers.h): read
// widened, the same arithmetic in fp32.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

void gelu_forward(Ctx& ctx, Tensor& y, const Tensor& x);
void gelu_backward(Ctx& ctx, Tensor& dx, const Tensor& dy, const Tensor& x);

// The CPU reference (ops/cpu/gelu.cc) and the CUDA kernels (ops/cuda/gelu.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void gelu_forward(Ctx& ctx, Tensor& y, const Tensor& x);
  void gelu_backward(Ctx& ctx, Tensor& dx, const Tensor& dy, const Tensor& x);
)

}  // namespace sy::ops
