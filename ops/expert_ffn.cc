#include "ops/expert_ffn.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const Tensor& buf, const Tensor& pre, const std::vector<int32_t>& offset, const ExpertWeights& w,
           FfnActivation act) {
  SY_CHECK(w.w1.ndim() == 3, "expert w1 " << shape_str(w.w1.shape()) << " is not (G, D, H)");
  SY_CHECK(w.w2.ndim() == 3, "expert w2 " << shape_str(w.w2.shape()) << " is not (G, H, D)");
  const int64_t G = w.w1.dim(0), D = w.w1.dim(1), H = w.w2.dim(1), R = buf.dim(0);
  const int64_t P = act == FfnActivation::swiglu ? 2 * H : H;  // pre-activation width
  check_shape(w.w1, {G, D, P}, act == FfnActivation::swiglu ? "expert w1 (gate|up)" : "expert w1");
  check_shape(w.w2, {G, H, D}, "expert w2");
  SY_CHECK(w.b1.defined() == w.b2.defined(), "expert biases: b1 and b2 are both given or both absent");
  if (w.b1.defined()) {
    check_shape(w.b1, {G, P}, "expert b1");
    check_shape(w.b2, {G, D}, "expert b2");
  }
  check_shape(buf, {R, D}, "expert buffer");
  check_shape(pre, {R, P}, "expert pre-activation");
  SY_CHECK(static_cast<int64_t>(offset.size()) == G + 1 && offset[0] == 0 && offset[G] == R,
           "expert offsets: " << offset.size() << " entries, last " << offset.back() << ", buffer rows " << R);
  check_device(ctx, "expert_ffn", {&buf, &pre, &w.w1, &w.b1, &w.w2, &w.b2});
  if ((act == FfnActivation::swiglu || !w.b1.defined()) && !ctx.device.is_cpu())
    no_cuda_kernel("expert_ffn with SwiGLU or without biases");
}
}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  check(ctx, a.buf, a.pre, a.offset, a.w, a.act);
  check_shape(a.out, a.buf.shape(), "expert out");
  check_device(ctx, "expert_ffn_forward", {&a.out});
  SY_DISPATCH(ctx, expert_ffn_forward, ctx, a);
}

void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  check(ctx, a.buf, a.pre, a.offset, a.w, a.act);
  check_shape(a.dout, a.buf.shape(), "expert dout");
  check_shape(a.dbuf, a.buf.shape(), "expert dbuf");
  check_shape(a.dw.w1, a.w.w1.shape(), "expert dw1");
  check_shape(a.dw.w2, a.w.w2.shape(), "expert dw2");
  SY_CHECK(a.dw.b1.defined() == a.w.b1.defined() && a.dw.b2.defined() == a.w.b2.defined(),
           "expert bias gradients are given exactly when the biases are");
  if (a.w.b1.defined()) {
    check_shape(a.dw.b1, a.w.b1.shape(), "expert db1");
    check_shape(a.dw.b2, a.w.b2.shape(), "expert db2");
  }
  check_device(ctx, "expert_ffn_backward", {&a.dbuf, &a.dout, &a.dw.w1, &a.dw.b1, &a.dw.w2, &a.dw.b2});
  SY_DISPATCH(ctx, expert_ffn_backward, ctx, a);
}

}  // namespace sy::ops
