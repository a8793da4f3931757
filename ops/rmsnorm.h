// Root-mean-square normalisation over the last dimension (Zhang & Sennrich
// 2019; Llama, Mixtral), with a gain and no bias or mean subtraction.
//
//   rstd_n = 1 / sqrt(mean_c x[n,c]^2 + eps)    xhat = x * rstd    y = xhat * w
//
// eps = kRmsNormEps (1e-5, Hugging Face Mixtral's rms_norm_eps default; the
// export writes it). Shapes: x, y (N, C); w (C); saved for backward: rstd (N).
// Backward (per row, g = dy * w):
//   dx = rstd * (g - xhat * mean_c(g * xhat))
//   dw += sum_n dy * xhat. Gradients accumulate (+=).
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

constexpr float kRmsNormEps = 1e-5f;

struct RmsNormArgs {
  Tensor& y;
  Tensor& rstd;
  const Tensor& x;
  const Tensor& w;
};

struct RmsNormBackwardArgs {
  Tensor& dx;
  Tensor& dw;
  const Tensor& dy;
  const Tensor& x;
  const Tensor& w;
  const Tensor& rstd;
};

void rmsnorm_forward(Ctx& ctx, const RmsNormArgs& a);
void rmsnorm_backward(Ctx& ctx, const RmsNormBackwardArgs& a);

// The CPU reference (ops/cpu/rmsnorm.cc) and the CUDA kernels (ops/cuda/rmsnorm.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  void rmsnorm_forward(Ctx& ctx, const RmsNormArgs& a);
  void rmsnorm_backward(Ctx& ctx, const RmsNormBackwardArgs& a);
)

}  // namespace sy::ops
