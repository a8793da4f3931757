// Expert FFNs on CUDA: a loop over the experts on the host offsets, one
// cuBLASLt GEMM per expert and direction (ops/cuda/gemm.h), each with its
// expert's own hidden width H_g (the packed layout of ops/expert_ffn.h: pre_g
// is expert g's (n_g, H_g) block of the packed pre):
//
//   forward:   pre_g = buf_g W1_g + b1_g (BIAS epilogue); act = gelu(pre) over
//              all rows at once; out_g = act_g W2_g + b2_g
//   backward:  act = gelu(pre); dact_g = dout_g W2_g^T; dW2_g += act_g^T dout_g;
//              db2_g += column sums of dout_g; dpre = gelu'(pre) dact (all rows);
//              dbuf_g += dpre_g W1_g^T; dW1_g += buf_g^T dpre_g; db1_g += column sums
//
// bf16 mode (the weights' bf16 shadows given): the GEMM operands buf, act,
// dout and dpre are rounded once each, for all experts, into bf16 scratch;
// the weights come from the shadows; every GEMM has bf16 A and B, fp32 C and
// bias, CUBLAS_COMPUTE_32F. pre, act, dact, dpre and the gradients are fp32.
//
// Why not cublasGemmGroupedBatchedEx: with CUBLAS_COMPUTE_32F it needs one
// type for A, B and C (GPU_PLAN.md), so bf16 inputs would mean bf16 outputs,
// and pre, dbuf and the fp32 weight gradients (accumulated with beta = 1)
// must stay fp32; cuBLASLt 13 has no grouped matmul. So one cuBLASLt call per
// expert in both modes (the offsets are on the host already: no sync); the
// padded-to-capacity strided-batched variant is still to come.
// Deterministic: fixed cuBLASLt algorithms per shape, column sums in fixed
// order, no atomics.
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/expert_ffn.h"
#include "ops/gelu.h"

namespace sy::ops::cuda {

namespace {

// Element i of t (fp32 or bf16) as a GEMM operand pointer.
const void* at(const Tensor& t, int64_t i) { return static_cast<const char*>(t.raw()) + i * dtype_size(t.dtype()); }

// C (rows, n) [+]= A (rows, k) B (k, n) [+ bias], all row-major and contiguous.
void gemm_nn(Ctx& ctx, bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, float* C,
             float beta, const float* bias) {
  GemmArgs g;
  g.bf16 = bf16;
  g.M = rows, g.N = n, g.K = k;
  g.A = A, g.lda = k;
  g.B = B, g.ldb = n;
  g.beta = beta;
  g.C = C, g.ldc = n;
  g.bias = bias;
  gemm(ctx, g);
}

// C (rows, n) += A (rows, k) B^T, B stored (n, k).
void gemm_nt(Ctx& ctx, bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, float* C,
             float beta) {
  GemmArgs g;
  g.bf16 = bf16;
  g.trans_b = true;
  g.M = rows, g.N = n, g.K = k;
  g.A = A, g.lda = k;
  g.B = B, g.ldb = k;
  g.beta = beta;
  g.C = C, g.ldc = n;
  gemm(ctx, g);
}

// C (k, n) += A^T B, A stored (rows, k), B (rows, n).
void gemm_tn(Ctx& ctx, bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, float* C) {
  GemmArgs g;
  g.bf16 = bf16;
  g.trans_a = true;
  g.M = k, g.N = n, g.K = rows;
  g.A = A, g.lda = k;
  g.B = B, g.ldb = n;
  g.beta = 1.f;
  g.C = C, g.ldc = n;
  gemm(ctx, g);
}

// The operand the GEMMs read: t itself (fp32 mode) or bf16(t) in scratch.
Tensor operand(Ctx& ctx, bool bf16, const Tensor& t) { return bf16 ? bf16_copy(ctx, t) : t; }

}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D, R = a.buf.dim(0);
  if (R == 0) return;
  const bool bf16 = a.w.w1_bf16 != nullptr;
  const Tensor buf = operand(ctx, bf16, a.buf);
  const Tensor& w1 = bf16 ? *a.w.w1_bf16 : a.w.w1;
  const Tensor& w2 = bf16 ? *a.w.w2_bf16 : a.w.w2;
  const float *b1 = a.w.b1.data<float>(), *b2 = a.w.b2.data<float>();
  float* pre = a.pre.data<float>();
  float* out = a.out.data<float>();
  int64_t p0 = 0;  // expert g's block of the packed pre (ops/expert_ffn.h)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, H = l.hidden[g];
    if (n > 0)
      gemm_nn(ctx, bf16, n, H, D, at(buf, r0 * D), at(w1, l.w1_offset(g)), pre + p0, 0.f, b1 + l.b1_offset(g));
    p0 += n * H;
  }
  Tensor act = Tensor::empty(a.pre.shape(), DType::f32, ctx);
  cuda::gelu_forward(ctx, act, a.pre);
  const Tensor act_op = operand(ctx, bf16, act);
  p0 = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, H = l.hidden[g];
    if (n > 0)
      gemm_nn(ctx, bf16, n, D, H, at(act_op, p0), at(w2, l.w2_offset(g)), out + r0 * D, 0.f, b2 + l.b2_offset(g));
    p0 += n * H;
  }
}

void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D, R = a.buf.dim(0);
  if (R == 0) return;
  const bool bf16 = a.w.w1_bf16 != nullptr;
  const float* dout = a.dout.data<float>();
  const Tensor buf_op = operand(ctx, bf16, a.buf), dout_op = operand(ctx, bf16, a.dout);
  const Tensor& w1 = bf16 ? *a.w.w1_bf16 : a.w.w1;
  const Tensor& w2 = bf16 ? *a.w.w2_bf16 : a.w.w2;
  float *dw1 = a.dw.w1.data<float>(), *db1 = a.dw.b1.data<float>();
  float *dw2 = a.dw.w2.data<float>(), *db2 = a.dw.b2.data<float>();
  Tensor act = Tensor::empty(a.pre.shape(), DType::f32, ctx);
  cuda::gelu_forward(ctx, act, a.pre);
  const Tensor act_op = operand(ctx, bf16, act);
  Tensor dact = Tensor::empty(a.pre.shape(), DType::f32, ctx);
  int64_t p0 = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, H = l.hidden[g];
    if (n == 0) continue;
    gemm_nt(ctx, bf16, n, H, D, at(dout_op, r0 * D), at(w2, l.w2_offset(g)), dact.data<float>() + p0, 0.f);
    gemm_tn(ctx, bf16, n, D, H, at(act_op, p0), at(dout_op, r0 * D), dw2 + l.w2_offset(g));
    column_sums_into(ctx, dout + r0 * D, n, D, db2 + l.b2_offset(g));
    p0 += n * H;
  }
  Tensor dpre = Tensor::zeros(a.pre.shape(), DType::f32, ctx);
  cuda::gelu_backward(ctx, dpre, dact, a.pre);
  const Tensor dpre_op = operand(ctx, bf16, dpre);
  p0 = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, H = l.hidden[g];
    if (n == 0) continue;
    gemm_nt(ctx, bf16, n, D, H, at(dpre_op, p0), at(w1, l.w1_offset(g)), a.dbuf.data<float>() + r0 * D, 1.f);
    gemm_tn(ctx, bf16, n, H, D, at(buf_op, r0 * D), at(dpre_op, p0), dw1 + l.w1_offset(g));
    column_sums_into(ctx, dpre.data<float>() + p0, n, H, db1 + l.b1_offset(g));
    p0 += n * H;
  }
}

}  // namespace sy::ops::cuda
