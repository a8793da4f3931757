#include "ops/matmul.h"

#include <cblas.h>

#include "ops/cpu/bf16_operand.h"
#include "ops/elementwise.h"
#include "ops/gelu.h"

namespace sy::ops::cpu {

void matmul_forward(Ctx& ctx, const MatmulArgs& a) {
  if (a.gelu) {  // the GELU epilogue (ops/matmul.h): y and gelu both from the fp32 z
    const bool y16 = a.y.dtype() == DType::bf16;
    Tensor z = y16 ? Tensor::empty(a.y.shape(), DType::f32, ctx) : a.y;
    const Tensor b = y16 && a.b.defined() ? bf16_operand(ctx, a.b) : a.b;  // (a bf16 y's bias, rounded)
    cpu::matmul_forward(ctx, {z, a.x, a.w, b, false, a.w_transposed, a.w_bf16, a.x_bf16});
    if (y16) cpu::to_bf16(ctx, a.y, z);
    cpu::gelu_forward(ctx, *a.gelu, z);
    return;
  }
  if (a.y.dtype() == DType::bf16) {  // the fp32 result, rounded (not accumulated: checked by the op)
    // ... its bias rounded to bf16 before it is added (ops/matmul.h)
    const Tensor b = a.b.defined() ? bf16_operand(ctx, a.b) : Tensor();
    Tensor y = Tensor::empty(a.y.shape(), DType::f32, ctx);
    matmul_forward(ctx, {y, a.x, a.w, b, false, a.w_transposed, a.w_bf16, a.x_bf16});
    cpu::to_bf16(ctx, a.y, y);
    return;
  }
  if (a.w_bf16) {
    if (a.x.dtype() == DType::bf16) {  // rounded by its producer
      if (a.x_bf16) *a.x_bf16 = a.x;
    } else if (a.x_bf16) {
      *a.x_bf16 = Tensor::empty(a.x.shape(), DType::bf16, ctx);
      const float* in = a.x.f32();
      bf16_t* out = a.x_bf16->data<bf16_t>();
      for (int64_t i = 0; i < a.x.numel(); ++i) out[i].bits = f32_to_bf16(in[i]);
    }
    const Tensor x = bf16_operand(ctx, a.x_bf16 ? *a.x_bf16 : a.x), w = bf16_operand(ctx, *a.w_bf16);
    return matmul_forward(ctx, {a.y, x, w, a.b, a.accumulate, a.w_transposed});
  }
  const int64_t N = a.x.dim(0), K = a.x.dim(1), M = a.w.dim(a.w_transposed ? 0 : 1);
  if (N == 0) return;
  float* y = a.y.f32();
  float beta = a.accumulate ? 1.f : 0.f;
  if (a.b.defined()) {
    const float* b = a.b.f32();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) y[n * M + m] = (a.accumulate ? y[n * M + m] : 0.f) + b[m];
    beta = 1.f;
  }
  if (a.w_transposed)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, M, K, 1.f, a.x.f32(), K, a.w.f32(), K, beta, y, M);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, M, K, 1.f, a.x.f32(), K, a.w.f32(), M, beta, y, M);
}

void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a) {
  if (a.gelu_pre) {  // the GELU epilogue's backward: g = dy W^T in fp32, then dx = g gelu'(pre) (written)
    Tensor g = Tensor::empty(a.dx->shape(), DType::f32, ctx);
    cpu::matmul_backward(ctx, {&g, a.dw, a.db, a.dy, a.x, a.w, a.w_transposed, a.w_bf16, false});
    if (a.dx->dtype() == DType::f32) a.dx->zero(ctx);  // (an f32 dx accumulates in gelu_backward)
    cpu::gelu_backward(ctx, *a.dx, g, *a.gelu_pre);
    return;
  }
  if (a.dx && a.dx->dtype() == DType::bf16) {  // written (checked by the op): the fp32 dx, rounded
    Tensor dx = Tensor::empty(a.dx->shape(), DType::f32, ctx);
    matmul_backward(ctx, {&dx, a.dw, a.db, a.dy, a.x, a.w, a.w_transposed, a.w_bf16, false});
    cpu::to_bf16(ctx, *a.dx, dx);
    return;
  }
  const int64_t N = a.x.dim(0), K = a.x.dim(1), M = a.w.dim(a.w_transposed ? 0 : 1);
  if (N == 0) return;
  const Tensor dy32 = widened(a.dy);  // (bf16: its values)
  const float* dy = dy32.f32();
  const float dx_beta = a.dx_accumulate ? 1.f : 0.f;  // (beta 0: sgemm writes C without reading it)
  if (a.w_bf16) {  // the GEMMs on rounded operands; db below from the fp32 dy
    const Tensor dy16 = bf16_operand(ctx, a.dy), x = a.dw ? bf16_operand(ctx, a.x) : a.x, w = bf16_operand(ctx, *a.w_bf16);
    matmul_backward(ctx, {a.dx, a.dw, nullptr, dy16, x, w, a.w_transposed, nullptr, a.dx_accumulate});
  } else if (a.w_transposed) {  // W (M, K): dx += dy W, dW += dy^T x
    if (a.dx)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, K, M, 1.f, dy, M, a.w.f32(), K, dx_beta, a.dx->f32(), K);
    if (a.dw)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, N, 1.f, dy, M, a.x.f32(), K, 1.f, a.dw->f32(), K);
  } else {
    if (a.dx)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, K, M, 1.f, dy, M, a.w.f32(), M, dx_beta, a.dx->f32(), K);
    if (a.dw)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, M, N, 1.f, a.x.f32(), K, dy, M, 1.f, a.dw->f32(), M);
  }
  if (a.db) {
    float* db = a.db->f32();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) db[m] += dy[n * M + m];
  }
}

}  // namespace sy::ops::cpu
