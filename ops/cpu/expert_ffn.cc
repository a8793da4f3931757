#include "ops/expert_ffn.h"

#include <cblas.h>

#include "ops/cpu/bf16_operand.h"
#include "ops/cpu/gelu_math.h"
#include "ops/gelu.h"
#include "ops/matmul.h"
#include "ops/swiglu.h"

namespace sy::ops::cpu {

namespace {
// Elements [offset, offset + numel(shape)) of a packed tensor, as `shape`; an
// undefined tensor (an absent bias) stays undefined.
Tensor block(const Tensor& t, int64_t offset, const Shape& shape) {
  if (!t.defined()) return Tensor();
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return t.reshape({t.numel()}).rows(offset, offset + n).reshape(shape);
}

// act = gelu(pre) and d = gelu'(pre) from one exp per element.
SY_VECTOR_CLONES void gelu_and_derivative(float* act, float* d, const float* pre, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gelu_value_and_derivative(pre[i], act[i], d[i]);
}

// dst[at .. at + src.numel()) = bf16(src).
void round_into(Tensor& dst, int64_t at, const Tensor& src) {
  bf16_t* out = dst.data<bf16_t>() + at;
  const float* in = src.f32();
  for (int64_t i = 0; i < src.numel(); ++i) out[i].bits = f32_to_bf16(in[i]);
}

// dact *= d, element-wise.
SY_VECTOR_CLONES void scale_by(float* dact, const float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dact[i] *= d[i];
}
}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D;
  const bool bf16 = a.w.w1_bf16 != nullptr;
  // bf16(buf) and bf16(act) for the caller to keep (backward reads the same values)
  if (bf16 && a.buf_bf16 && a.buf.dtype() == DType::bf16) {
    *a.buf_bf16 = a.buf;  // rounded by its producer (the dispatch)
  } else if (bf16 && a.buf_bf16) {
    *a.buf_bf16 = Tensor::empty(a.buf.shape(), DType::bf16, ctx);
    round_into(*a.buf_bf16, 0, a.buf);
  }
  if (bf16 && a.act_bf16) *a.act_bf16 = Tensor::empty({l.pre_numel(a.offset) / (l.act == FfnActivation::swiglu ? 2 : 1)},
                                                      DType::bf16, ctx);
  int64_t p0 = 0, a0 = 0;  // expert g's block of pre, of act
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1], n = r1 - r0, H = l.hidden[g], P = l.width(g);
    if (n == 0) continue;
    Tensor pre = block(a.pre, p0, {n, P}), out = a.out.rows(r0, r1);
    p0 += n * P;
    const Tensor w1_16 = bf16 ? block(*a.w.w1_bf16, l.w1_offset(g), {D, P}) : Tensor();
    const Tensor w2_16 = bf16 ? block(*a.w.w2_bf16, l.w2_offset(g), {H, D}) : Tensor();
    // GELU: the first GEMM's GELU epilogue (ops/matmul.h), act in pre's
    // dtype (a bf16 pre: act = bf16(gelu(z)) of the GEMM's fp32 z).
    const bool swiglu = l.act == FfnActivation::swiglu;
    Tensor act = Tensor::empty({n, H}, swiglu ? DType::f32 : pre.dtype(), ctx);
    cpu::matmul_forward(ctx, {pre, a.buf.rows(r0, r1), block(a.w.w1, l.w1_offset(g), {D, P}),
                              block(a.w.b1, l.b1_offset(g), {P}), false, false, bf16 ? &w1_16 : nullptr, nullptr,
                              swiglu ? nullptr : &act});
    if (swiglu) cpu::swiglu_forward(ctx, {act, pre});
    if (bf16 && a.act_bf16) round_into(*a.act_bf16, a0, widened(act));
    a0 += n * H;
    cpu::matmul_forward(ctx, {out, act, block(a.w.w2, l.w2_offset(g), {H, D}), block(a.w.b2, l.b2_offset(g), {D}),
                              false, false, bf16 ? &w2_16 : nullptr});
  }
}

// Per expert: dact = dout W2^T written by the GEMM (no zero fill); dW2, db2
// from act; then dpre and the first matmul's backward. GELU: act and
// gelu'(pre) in one pass and dpre = dact * gelu'(pre) in place (the same
// arithmetic as the GELU epilogue's backward, ops/matmul.h: dact in fp32,
// not rounded first). SwiGLU: act = silu(g) * u, dpre = [dg | du] from
// swiglu_backward. dW2 reads the forward's act where it kept bf16(act) (with
// a bf16 pre, bf16(gelu(z)): not quite gelu of the rounded pre), else act
// recomputed from pre here.
void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D;
  const bool swiglu = l.act == FfnActivation::swiglu, bias = a.w.b1.defined(), bf16 = a.w.w1_bf16 != nullptr;
  // Written gradients: zeros added to, the sums' bits (experts without rows keep the zeros).
  if (!a.grads_accumulate)
    for (Tensor* t : {&a.dw.w1, &a.dw.b1, &a.dw.w2, &a.dw.b2})
      if (t->defined()) t->zero(ctx);
  int64_t p0 = 0, a0 = 0;  // expert g's block of pre, of act
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1], n = r1 - r0, H = l.hidden[g], P = l.width(g);
    if (n == 0) continue;
    // (a bf16 pre widened: the fp32 arithmetic on its values)
    const Tensor pre = widened(block(a.pre, p0, {n, P})), dout = a.dout.rows(r0, r1);
    p0 += n * P;
    Tensor act = Tensor::empty({n, H}, DType::f32, ctx), dgelu;
    if (swiglu) {
      cpu::swiglu_forward(ctx, {act, pre});
    } else {
      dgelu = Tensor::empty({n, H}, DType::f32, ctx);
      gelu_and_derivative(act.f32(), dgelu.f32(), pre.f32(), n * H);
    }
    const Tensor w2 = block(a.w.w2, l.w2_offset(g), {H, D});
    const Tensor w1_16 = bf16 ? block(*a.w.w1_bf16, l.w1_offset(g), {D, P}) : Tensor();
    const Tensor w2_16 = bf16 ? block(*a.w.w2_bf16, l.w2_offset(g), {H, D}) : Tensor();
    Tensor dact = Tensor::empty({n, H}, DType::f32, ctx);
    {  // dact = dout W2^T (bf16 mode: bf16(dout) W2_16^T, as matmul_backward's dx)
      const Tensor dy = bf16 ? bf16_operand(ctx, dout) : dout, w = bf16 ? bf16_operand(ctx, w2_16) : w2;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, H, D, 1.f, dy.f32(), D, w.f32(), D, 0.f, dact.f32(), H);
    }
    Tensor dw2 = block(a.dw.w2, l.w2_offset(g), {H, D}), db2 = block(a.dw.b2, l.b2_offset(g), {D});
    Tensor dw1 = block(a.dw.w1, l.w1_offset(g), {D, P}), db1 = block(a.dw.b1, l.b1_offset(g), {P});
    const Tensor act_kept = a.act_bf16 ? block(*a.act_bf16, a0, {n, H}) : act;
    a0 += n * H;
    cpu::matmul_backward(ctx,
                         {nullptr, &dw2, bias ? &db2 : nullptr, dout, act_kept, w2, false, bf16 ? &w2_16 : nullptr});
    Tensor dpre;
    if (swiglu) {
      dpre = Tensor::zeros({n, P}, DType::f32, ctx);
      cpu::swiglu_backward(ctx, {dpre, dact, pre});
    } else {
      scale_by(dact.f32(), dgelu.f32(), n * H);
      dpre = dact;
    }
    // bf16 mode: dpre rounded, as the activation's backward writes it; db1
    // then sums the rounded values (matmul's bf16 dy).
    if (bf16) dpre = dpre.to(DType::bf16);
    Tensor dbuf = a.dbuf.rows(r0, r1);
    cpu::matmul_backward(ctx, {&dbuf, &dw1, bias ? &db1 : nullptr, dpre, a.buf.rows(r0, r1),
                               block(a.w.w1, l.w1_offset(g), {D, P}), false, bf16 ? &w1_16 : nullptr,
                               a.dbuf_accumulate});
  }
}

}  // namespace sy::ops::cpu
