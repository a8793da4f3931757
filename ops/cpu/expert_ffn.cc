#include "ops/expert_ffn.h"

#include "ops/gelu.h"
#include "ops/matmul.h"
#include "ops/swiglu.h"

namespace sy::ops::cpu {

namespace {
// Expert g's slice of a (G, a, b) weight as an (a, b) matrix, or of a (G, b)
// bias as (b); an undefined bias stays undefined.
Tensor expert(const Tensor& w, int64_t g) {
  if (!w.defined()) return Tensor();
  Shape s(w.shape().begin() + 1, w.shape().end());
  return w.rows(g, g + 1).reshape(s);
}

void activate(Ctx& ctx, Tensor& act, const Tensor& pre, FfnActivation a) {
  if (a == FfnActivation::swiglu)
    cpu::swiglu_forward(ctx, {act, pre});
  else
    cpu::gelu_forward(ctx, act, pre);
}
}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  const int64_t G = a.w.w1.dim(0), H = a.w.w2.dim(1);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1];
    if (r1 == r0) continue;
    Tensor pre = a.pre.rows(r0, r1), out = a.out.rows(r0, r1);
    cpu::matmul_forward(ctx, {pre, a.buf.rows(r0, r1), expert(a.w.w1, g), expert(a.w.b1, g)});
    Tensor act = Tensor::empty({r1 - r0, H}, DType::f32, ctx);
    activate(ctx, act, pre, a.act);
    cpu::matmul_forward(ctx, {out, act, expert(a.w.w2, g), expert(a.w.b2, g)});
  }
}

void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  const int64_t G = a.w.w1.dim(0), H = a.w.w2.dim(1), P = a.pre.dim(1);
  const bool bias = a.w.b1.defined();
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1];
    if (r1 == r0) continue;
    const Tensor pre = a.pre.rows(r0, r1);
    Tensor act = Tensor::empty({r1 - r0, H}, DType::f32, ctx);
    activate(ctx, act, pre, a.act);
    Tensor dact = Tensor::zeros({r1 - r0, H}, DType::f32, ctx);
    Tensor dw2 = expert(a.dw.w2, g), db2 = expert(a.dw.b2, g), dw1 = expert(a.dw.w1, g), db1 = expert(a.dw.b1, g);
    cpu::matmul_backward(ctx, {&dact, &dw2, bias ? &db2 : nullptr, a.dout.rows(r0, r1), act, expert(a.w.w2, g)});
    Tensor dpre = Tensor::zeros({r1 - r0, P}, DType::f32, ctx);
    if (a.act == FfnActivation::swiglu)
      cpu::swiglu_backward(ctx, {dpre, dact, pre});
    else
      cpu::gelu_backward(ctx, dpre, dact, pre);
    Tensor dbuf = a.dbuf.rows(r0, r1);
    cpu::matmul_backward(ctx, {&dbuf, &dw1, bias ? &db1 : nullptr, dpre, a.buf.rows(r0, r1), expert(a.w.w1, g)});
  }
}

}  // namespace sy::ops::cpu
