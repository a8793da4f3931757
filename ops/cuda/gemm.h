// Row-major fp32 GEMM through cuBLASLt (ops/cuda/matmul.cu), for the ops
// that multiply matrices (matmul, expert_ffn):
//
//   C (M, N) = op(A) op(B) + beta * C [+ bias broadcast over rows]
//   op(A) is (M, K): A stored (M, K) with leading dimension lda, or (K, M) when trans_a
//   op(B) is (K, N): B stored (K, N) with leading dimension ldb, or (N, K) when trans_b
//   bias (N) or null
//
// fp32 mode: CUBLAS_COMPUTE_32F (no TF32). The algorithm is chosen once per
// shape, alignment and epilogue and cached.
#pragma once
#include <cstdint>

#include "core/context.h"

namespace sy::ops::cuda {

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;
  int64_t lda = 0;
  const float* B = nullptr;
  int64_t ldb = 0;
  float beta = 0.f;
  float* C = nullptr;
  int64_t ldc = 0;
  const float* bias = nullptr;
};

void gemm(Ctx& ctx, const GemmArgs& g);

}  // namespace sy::ops::cuda
