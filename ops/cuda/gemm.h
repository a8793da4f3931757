// Row-major fp32 GEMM through cuBLASLt (ops/cuda/matmul.cu), for the ops
// that multiply matrices (matmul, expert_ffn):
//
//   C (M, N) = op(A) op(B) + beta * C [+ bias broadcast over rows]
//   op(A) is (M, K): A stored (M, K) with leading dimension lda, or (K, M) when trans_a
//   op(B) is (K, N): B stored (K, N) with leading dimension ldb, or (N, K) when trans_b
//   bias (N) or null
//
// fp32 mode: CUBLAS_COMPUTE_32F (no TF32), A, B, C fp32.
// bf16 mode (bf16 true): A and B bf16, C and the bias fp32, CUBLAS_COMPUTE_32F
// (bf16 products on the tensor cores, fp32 accumulation; ops/matmul.h).
// bf16 output (C16 given, C null, beta 0): D = bf16(op(A) op(B) [+ bf16(bias)]),
// the fp32 accumulator plus the bias rounded to bf16 (ops/matmul.h), rounded
// once by cuBLASLt. gemm() returns false, having written nothing into C,
// where it cannot (no algorithm); gemm_into then writes fp32 with the same
// rounded bias and rounds. Every other call returns true (or throws).
// Strided batch (batch > 1): `batch` independent GEMMs of these shapes, the
// b-th reading A + b stride_a, B + b stride_b, bias + b stride_bias and
// writing C + b stride_c (strides in elements): the equal-row expert GEMMs of
// a padded route (ops/expert_ffn.h) in one call.
// GELU epilogues (bf16 output only: ops/matmul.h's GELU epilogue): gelu,
// C16 = bf16(gelu(z)) and aux = bf16(z), z the fp32 result with its bias
// (cuBLASLt's GELU_AUX[_BIAS]); dgelu, C16 = bf16(z * gelu'(aux)) with aux
// the forward's pre-activation, no bias (DGELU). aux is laid out as C (ldc,
// stride_c). gemm() returns false where cuBLASLt has no such algorithm
// (rows or batch strides not a multiple of 8 values: at once; none found,
// or refused at launch: a stderr note once per plan), having written
// nothing; gemm_gelu_into and gemm_dgelu_into then compute the same from
// fp32 scratch with the GELU kernels.
// The descriptor, layouts and algorithm are made once per shape,
// alignment, mode, batch and epilogue and kept (a call sets its pointers
// and launches); per bucket of M or K where the caller says it varies (a
// call then also sets the layouts' M and K).
#pragma once
#include <cstdint>

#include "core/context.h"
#include "core/tensor.h"

namespace sy::ops::cuda {

enum class Epilogue { none, gelu, dgelu };

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  bool bf16 = false;  // A and B bf16
  int64_t M = 0, N = 0, K = 0;
  const void* A = nullptr;  // float, or bf16 in bf16 mode
  int64_t lda = 0;
  const void* B = nullptr;
  int64_t ldb = 0;
  float beta = 0.f;
  float* C = nullptr;
  void* C16 = nullptr;  // instead of C: a bf16 output
  int64_t ldc = 0;
  const float* bias = nullptr;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_c = 0, stride_bias = 0;
  // M or K changes from call to call (an expert's rows in a packed route):
  // the plan is kept per bucket of it, 4 to an octave (ops/cuda/matmul.cu),
  // not per value. Single GEMMs only (batch 1).
  bool bucket_m = false, bucket_k = false;
  Epilogue epilogue = Epilogue::none;
  void* aux = nullptr;  // gelu: written (bf16 pre-activation); dgelu: read
};

bool gemm(Ctx& ctx, const GemmArgs& g);

// For tests: the plans made so far (every device), the calls a row
// bucket's plan could not serve (run on their exact shape's plan instead),
// and the bf16-output calls that no algorithm served (no plan, or refused at
// launch: gemm() returned false, and its caller wrote fp32 scratch instead:
// the same values, without the epilogue's saving).
size_t gemm_plan_count();
int64_t gemm_bucket_fallbacks();
int64_t gemm_bf16_output_fallbacks();

// g written into `out` (g.C and g.C16 are set from it): f32, the GEMM's C;
// bf16 (beta 0), the GEMM's bf16 output, or where gemm() cannot, fp32
// scratch of out's shape (the bias rounded to bf16 first) rounded into it
// (to_bf16). out is the contiguous
// region the GEMM writes (ldc its row length; a strided batch's matrices
// back to back).
void gemm_into(Ctx& ctx, GemmArgs g, Tensor& out);

// The GELU epilogue's two outputs (ops/matmul.h), g's output into act and
// its pre-activation into pre (f32 or bf16 alike, each the contiguous region
// C would be): bf16, gemm() with Epilogue::gelu where it can, else fp32
// scratch rounded into pre and its GELU into act; f32, the GEMM into pre
// and gelu_forward from it. g.C, g.C16, g.epilogue and g.aux are set here.
void gemm_gelu_into(Ctx& ctx, GemmArgs g, Tensor& act, Tensor& pre);

// The GELU epilogue's backward: dpre = (g's product) * gelu'(pre), written
// (beta 0, no bias); dpre and pre both f32 or both bf16 (bf16: gemm() with
// Epilogue::dgelu where it can, else fp32 scratch and gelu_backward).
void gemm_dgelu_into(Ctx& ctx, GemmArgs g, Tensor& dpre, const Tensor& pre);

// bf16(t) for an fp32 t, in scratch from ctx's allocator: a bf16 GEMM operand.
Tensor bf16_copy(Ctx& ctx, const Tensor& t);

}  // namespace sy::ops::cuda
