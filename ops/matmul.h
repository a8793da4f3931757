// Dense affine map: OpenBLAS sgemm on the CPU, cuBLASLt on CUDA.
//
//   y = x W + b  [+ y when accumulate]     x (N, K), W (K, M), b (M) or undefined, y (N, M)
//   w_transposed: y = x W^T + b with W (M, K) (a tied LM head: x wte^T)
//
// Backward: dx += dy W^T; dW += x^T dy; db += sum_n dy (w_transposed:
// dx += dy W; dW += dy^T x). Gradients accumulate; a null gradient pointer
// means that gradient is not wanted.
// Saved for backward: x (the caller keeps it).
#pragma once
#include "core/tensor.h"

namespace sy::ops {

struct MatmulArgs {
  Tensor& y;
  const Tensor& x;
  const Tensor& w;
  const Tensor& b;  // undefined: no bias
  bool accumulate = false;
  bool w_transposed = false;
};

struct MatmulBackwardArgs {
  Tensor* dx;
  Tensor* dw;
  Tensor* db;
  const Tensor& dy;
  const Tensor& x;
  const Tensor& w;
  bool w_transposed = false;
};

void matmul_forward(Ctx& ctx, const MatmulArgs& a);
void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a);

namespace cpu {
void matmul_forward(Ctx& ctx, const MatmulArgs& a);
void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a);
}  // namespace cpu

// The CUDA kernels (ops/cuda/matmul.cu; CUDA builds).
namespace cuda {
void matmul_forward(Ctx& ctx, const MatmulArgs& a);
void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a);
}  // namespace cuda

}  // namespace sy::ops
