#include "ops/expert_ffn.h"

#include <cblas.h>

#include "ops/cpu/gelu_math.h"
#include "ops/gelu.h"
#include "ops/matmul.h"

namespace sy::ops::cpu {

namespace {
// Expert g's slice of a (G, a, b) weight as an (a, b) matrix, or of a (G, b) bias as (b).
Tensor expert(const Tensor& w, int64_t g) {
  Shape s(w.shape().begin() + 1, w.shape().end());
  return w.rows(g, g + 1).reshape(s);
}

// act = gelu(pre) and d = gelu'(pre) from one exp per element.
SY_VECTOR_CLONES void gelu_and_derivative(float* act, float* d, const float* pre, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gelu_value_and_derivative(pre[i], act[i], d[i]);
}

// dact *= d, element-wise.
SY_VECTOR_CLONES void scale_by(float* dact, const float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dact[i] *= d[i];
}
}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  const int64_t G = a.w.w1.dim(0), H = a.w.w1.dim(2);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1];
    if (r1 == r0) continue;
    Tensor pre = a.pre.rows(r0, r1), out = a.out.rows(r0, r1);
    cpu::matmul_forward(ctx, {pre, a.buf.rows(r0, r1), expert(a.w.w1, g), expert(a.w.b1, g)});
    Tensor act = Tensor::empty({r1 - r0, H}, DType::f32, ctx);
    cpu::gelu_forward(ctx, act, pre);
    cpu::matmul_forward(ctx, {out, act, expert(a.w.w2, g), expert(a.w.b2, g)});
  }
}

// Per expert: act and gelu'(pre) in one pass; dact = dout W2^T written by the
// GEMM (no zero fill); dW2, db2 from act; dpre = dact * gelu'(pre) in place;
// then the first matmul's backward. The same arithmetic as composing
// matmul_backward and gelu_backward on zeroed buffers.
void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  const int64_t G = a.w.w1.dim(0), D = a.w.w1.dim(1), H = a.w.w1.dim(2);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1], R = r1 - r0;
    if (R == 0) continue;
    const Tensor pre = a.pre.rows(r0, r1), dout = a.dout.rows(r0, r1);
    Tensor act = Tensor::empty({R, H}, DType::f32, ctx), dgelu = Tensor::empty({R, H}, DType::f32, ctx);
    gelu_and_derivative(act.f32(), dgelu.f32(), pre.f32(), R * H);
    const Tensor w2 = expert(a.w.w2, g);
    Tensor dact = Tensor::empty({R, H}, DType::f32, ctx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, H, D, 1.f, dout.f32(), D, w2.f32(), D, 0.f, dact.f32(), H);
    Tensor dw2 = expert(a.dw.w2, g), db2 = expert(a.dw.b2, g), dw1 = expert(a.dw.w1, g), db1 = expert(a.dw.b1, g);
    cpu::matmul_backward(ctx, {nullptr, &dw2, &db2, dout, act, w2});
    scale_by(dact.f32(), dgelu.f32(), R * H);
    Tensor dbuf = a.dbuf.rows(r0, r1);
    cpu::matmul_backward(ctx, {&dbuf, &dw1, &db1, dact, a.buf.rows(r0, r1), expert(a.w.w1, g)});
  }
}

}  // namespace sy::ops::cpu
