// GELU, tanh approximation (Hendrycks & Gimpel 2016), applied after the FFN's
// first bias (the bias is added by matmul, as a cuBLASLt BIAS|GELU epilogue would).
//
//   y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3*0.044715 x^2)
//
// Shapes: any, y like x. Saved for backward: x. dx accumulates.
#pragma once
#include "core/tensor.h"

namespace sy::ops {

void gelu_forward(Tensor& y, const Tensor& x);
void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x);
void gelu_forward(float* y, const float* x, int64_t n);
void gelu_backward(float* dx, const float* dy, const float* x, int64_t n);

}  // namespace sy::ops
