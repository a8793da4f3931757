// Elementwise ops on tensors of one shape (f32):
//
//   add_into:  y += x            (residual adds, a shared expert's output)
//   mul_into:  y *= x            (multiplicative jitter and its gradient)
//   scale:     y *= s            (a scalar: the data-parallel mean of summed gradients)
//   sigmoid:   y = 1 / (1 + exp(-x))
//   to_bf16:   y = bf16(x)      (y bf16, x f32; round to nearest even as core/dtype.h:
//                               the bf16 shadows of master weights, GEMM operands)
//   to_f32:    y = float(x)     (y f32, x bf16; exact: bf16 attention's outputs and
//                               gradients back into the f32 residual stream)
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

void add_into(Ctx& ctx, Tensor& y, const Tensor& x);
void mul_into(Ctx& ctx, Tensor& y, const Tensor& x);
void sigmoid(Ctx& ctx, Tensor& y, const Tensor& x);
void scale(Ctx& ctx, Tensor& y, float s);
void to_bf16(Ctx& ctx, Tensor& y, const Tensor& x);
void to_f32(Ctx& ctx, Tensor& y, const Tensor& x);

// The CPU reference (ops/cpu/elementwise.cc) and the CUDA kernels (ops/cuda/elementwise.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void scale(Ctx& ctx, Tensor& y, float s);
  void to_bf16(Ctx& ctx, Tensor& y, const Tensor& x);
  void to_f32(Ctx& ctx, Tensor& y, const Tensor& x);
  void add_into(Ctx& ctx, Tensor& y, const Tensor& x);
  void mul_into(Ctx& ctx, Tensor& y, const Tensor& x);
  void sigmoid(Ctx& ctx, Tensor& y, const Tensor& x);
)

}  // namespace sy::ops
