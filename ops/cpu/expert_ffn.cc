#include "ops/expert_ffn.h"

#include "ops/gelu.h"
#include "ops/matmul.h"

namespace sy::ops::cpu {

namespace {
// Elements [offset, offset + numel(shape)) of a packed tensor, as `shape`.
Tensor block(const Tensor& t, int64_t offset, const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return t.reshape({t.numel()}).rows(offset, offset + n).reshape(shape);
}
}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D;
  int64_t p0 = 0;  // expert g's block of pre
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1], n = r1 - r0, H = l.hidden[g];
    if (n == 0) continue;
    Tensor pre = block(a.pre, p0, {n, H}), out = a.out.rows(r0, r1);
    p0 += n * H;
    cpu::matmul_forward(ctx, {pre, a.buf.rows(r0, r1), block(a.w.w1, l.w_offset(g), {D, H}),
                              block(a.w.b1, l.b1_offset(g), {H})});
    Tensor act = Tensor::empty({n, H}, DType::f32, ctx);
    cpu::gelu_forward(ctx, act, pre);
    cpu::matmul_forward(ctx, {out, act, block(a.w.w2, l.w_offset(g), {H, D}), block(a.w.b2, l.b2_offset(g), {D})});
  }
}

void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D;
  int64_t p0 = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = a.offset[g], r1 = a.offset[g + 1], n = r1 - r0, H = l.hidden[g];
    if (n == 0) continue;
    const Tensor pre = block(a.pre, p0, {n, H});
    p0 += n * H;
    Tensor act = Tensor::empty({n, H}, DType::f32, ctx);
    cpu::gelu_forward(ctx, act, pre);
    Tensor dact = Tensor::zeros({n, H}, DType::f32, ctx);
    Tensor dw2 = block(a.dw.w2, l.w_offset(g), {H, D}), db2 = block(a.dw.b2, l.b2_offset(g), {D});
    Tensor dw1 = block(a.dw.w1, l.w_offset(g), {D, H}), db1 = block(a.dw.b1, l.b1_offset(g), {H});
    cpu::matmul_backward(ctx, {&dact, &dw2, &db2, a.dout.rows(r0, r1), act, block(a.w.w2, l.w_offset(g), {H, D})});
    Tensor dpre = Tensor::zeros({n, H}, DType::f32, ctx);
    cpu::gelu_backward(ctx, dpre, dact, pre);
    Tensor dbuf = a.dbuf.rows(r0, r1);
    cpu::matmul_backward(ctx, {&dbuf, &dw1, &db1, dpre, a.buf.rows(r0, r1), block(a.w.w1, l.w_offset(g), {D, H})});
  }
}

}  // namespace sy::ops::cpu
