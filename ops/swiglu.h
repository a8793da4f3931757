// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"; Llama, Mixtral):
// the FFN activation over a packed gate|up tensor, the output of one GEMM
// with weight [W_gate | W_up] (C, 2H), so gate and up cost one GEMM.
//
//   x = [g | u] per row            g = x[:, :H], u = x[:, H:]
//   y = silu(g) * u                silu(g) = g * sigmoid(g)
//
// Shapes: x (N, 2H) saved for backward; y (N, H).
// Backward, with s = sigmoid(g):
//   dg = dy * u * s * (1 + g * (1 - s))      du = dy * silu(g)
//   dx (N, 2H) = [dg | du] accumulates (+=).
// x and dy f32. As GELU's (ops/gelu.h): y may be bf16 = bf16(y) (a bf16
// GEMM's input), and a bf16 dx is written, dx = bf16([dg | du]) (a bf16
// GEMM's dy), not accumulated.
// In Hugging Face's Mixtral names, W_gate is w1 and W_up is w3 (each stored
// transposed, (H, C)); the down projection after this op is w2.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

struct SwigluArgs {
  Tensor& y;
  const Tensor& x;
};

struct SwigluBackwardArgs {
  Tensor& dx;
  const Tensor& dy;
  const Tensor& x;
};

void swiglu_forward(Ctx& ctx, const SwigluArgs& a);
void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a);

// The CPU reference (ops/cpu/swiglu.cc) and the CUDA kernels (ops/cuda/swiglu.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  void swiglu_forward(Ctx& ctx, const SwigluArgs& a);
  void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a);
)

}  // namespace sy::ops
