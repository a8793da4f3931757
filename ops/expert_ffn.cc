#include "ops/expert_ffn.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const Tensor& buf, const Tensor& pre, const std::vector<int32_t>& offset, const ExpertWeights& w) {
  SY_CHECK(w.w1.ndim() == 3, "expert w1 " << shape_str(w.w1.shape()) << " is not (G, D, H)");
  const int64_t G = w.w1.dim(0), D = w.w1.dim(1), H = w.w1.dim(2), R = buf.dim(0);
  check_shape(w.b1, {G, H}, "expert b1");
  check_shape(w.w2, {G, H, D}, "expert w2");
  check_shape(w.b2, {G, D}, "expert b2");
  check_shape(buf, {R, D}, "expert buffer");
  check_shape(pre, {R, H}, "expert pre-activation");
  SY_CHECK(static_cast<int64_t>(offset.size()) == G + 1 && offset[0] == 0 && offset[G] == R,
           "expert offsets: " << offset.size() << " entries, last " << offset.back() << ", buffer rows " << R);
  check_device(ctx, "expert_ffn", {&buf, &pre, &w.w1, &w.b1, &w.w2, &w.b2});
}
}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  check(ctx, a.buf, a.pre, a.offset, a.w);
  check_shape(a.out, a.buf.shape(), "expert out");
  check_device(ctx, "expert_ffn_forward", {&a.out});
  SY_DISPATCH(ctx, expert_ffn_forward, ctx, a);
}

void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  check(ctx, a.buf, a.pre, a.offset, a.w);
  check_shape(a.dout, a.buf.shape(), "expert dout");
  check_shape(a.dbuf, a.buf.shape(), "expert dbuf");
  check_shape(a.dw.w1, a.w.w1.shape(), "expert dw1");
  check_shape(a.dw.b1, a.w.b1.shape(), "expert db1");
  check_shape(a.dw.w2, a.w.w2.shape(), "expert dw2");
  check_shape(a.dw.b2, a.w.b2.shape(), "expert db2");
  check_device(ctx, "expert_ffn_backward", {&a.dbuf, &a.dout, &a.dw.w1, &a.dw.b1, &a.dw.w2, &a.dw.b2});
  SY_DISPATCH(ctx, expert_ffn_backward, ctx, a);
}

}  // namespace sy::ops
