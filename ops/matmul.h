// Dense affine map through OpenBLAS sgemm.
//
//   y = x W + b          x (N, K), W (K, M), b (M) or undefined, y (N, M)
//
// Backward: dx += dy W^T; dW += x^T dy; db += sum_n dy. Gradients accumulate.
// Saved for backward: x (the caller keeps it).
#pragma once
#include "core/tensor.h"

namespace sy::ops {

void matmul_forward(Tensor& y, const Tensor& x, const Tensor& W, const Tensor& b);
// dx, dW or db may be null when that gradient is not wanted.
void matmul_backward(Tensor* dx, Tensor* dW, Tensor* db, const Tensor& dy, const Tensor& x,
                     const Tensor& W);

// Raw-pointer form used by ops that run many small GEMMs over slices of one
// buffer (the experts over the group-major buffer): y (N, M) = x (N, K) W (K, M)
// (+ b when non-null). accumulate=true adds into y instead of overwriting it.
void gemm_rows(float* y, const float* x, const float* W, const float* b, int64_t N, int64_t K,
               int64_t M, bool accumulate = false);
// dx (N,K) += dy W^T, dW (K,M) += x^T dy, db (M) += colsum(dy); any may be null.
void gemm_rows_backward(float* dx, float* dW, float* db, const float* dy, const float* x,
                        const float* W, int64_t N, int64_t K, int64_t M);

}  // namespace sy::ops
