// Layer normalisation over the last dimension (Ba et al. 2016).
//
//   mu_n = mean_c x[n,c]    rstd_n = 1 / sqrt(var_n + eps)
//   xhat = (x - mu) * rstd  y = xhat * w + b
//
// Shapes: x, y (N, C); w, b (C); saved for backward: mean, rstd (N). x f32;
// y f32, or bf16 = bf16(y) when y feeds a bf16 GEMM (ops/matmul.h takes a
// bf16 x as already rounded), saving that GEMM's pass to round it.
// Backward (per row, g = dy * w):
//   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
//   dw += sum_n dy * xhat; db += sum_n dy. All gradients accumulate (+=).
// w and b may be undefined Tensors: then y = xhat (routed attention's
// parameter-free normalisation of queries and keys), and dw, db are null.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

constexpr float kLayerNormEps = 1e-5f;

struct LayerNormArgs {
  Tensor& y;
  Tensor& mean;
  Tensor& rstd;
  const Tensor& x;
  const Tensor& w;
  const Tensor& b;
};

struct LayerNormBackwardArgs {
  Tensor& dx;
  Tensor* dw;
  Tensor* db;
  const Tensor& dy;
  const Tensor& x;
  const Tensor& w;
  const Tensor& mean;
  const Tensor& rstd;
};

void layernorm_forward(Ctx& ctx, const LayerNormArgs& a);
void layernorm_backward(Ctx& ctx, const LayerNormBackwardArgs& a);

// The CPU reference (ops/cpu/layernorm.cc) and the CUDA kernels (ops/cuda/layernorm.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void layernorm_forward(Ctx& ctx, const LayerNormArgs& a);
  void layernorm_backward(Ctx& ctx, const LayerNormBackwardArgs& a);
)

}  // namespace sy::ops
