#include "ops/matmul.h"

#include <cblas.h>

namespace sy::ops {

void gemm_rows(float* y, const float* x, const float* W, const float* b, int64_t N, int64_t K,
               int64_t M, bool accumulate) {
  if (N == 0) return;
  float beta = accumulate ? 1.f : 0.f;
  if (b) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) y[n * M + m] = (accumulate ? y[n * M + m] : 0.f) + b[m];
    beta = 1.f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, M, K, 1.f, x, K, W, M, beta, y, M);
}

void gemm_rows_backward(float* dx, float* dW, float* db, const float* dy, const float* x,
                        const float* W, int64_t N, int64_t K, int64_t M) {
  if (N == 0) return;
  if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, K, M, 1.f, dy, M, W, M, 1.f, dx, K);
  if (dW) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, M, N, 1.f, x, K, dy, M, 1.f, dW, M);
  if (db)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) db[m] += dy[n * M + m];
}

void matmul_forward(Tensor& y, const Tensor& x, const Tensor& W, const Tensor& b) {
  const int64_t N = x.dim(0), K = x.dim(1), M = W.dim(1);
  check_shape(W, {K, M}, "matmul W");
  check_shape(y, {N, M}, "matmul y");
  if (b.defined()) check_shape(b, {M}, "matmul bias");
  gemm_rows(y.f32(), x.f32(), W.f32(), b.defined() ? b.f32() : nullptr, N, K, M);
}

void matmul_backward(Tensor* dx, Tensor* dW, Tensor* db, const Tensor& dy, const Tensor& x,
                     const Tensor& W) {
  const int64_t N = x.dim(0), K = x.dim(1), M = W.dim(1);
  check_shape(dy, {N, M}, "matmul dy");
  if (dx) check_shape(*dx, x.shape(), "matmul dx");
  if (dW) check_shape(*dW, W.shape(), "matmul dW");
  gemm_rows_backward(dx ? dx->f32() : nullptr, dW ? dW->f32() : nullptr,
                     db ? db->f32() : nullptr, dy.f32(), x.f32(), W.f32(), N, K, M);
}

}  // namespace sy::ops
