#include "ops/swiglu.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
int64_t hidden(const Tensor& x) {
  SY_CHECK(x.ndim() == 2 && x.dim(1) % 2 == 0, "swiglu: x " << shape_str(x.shape()) << " is not (N, 2H)");
  return x.dim(1) / 2;
}
}  // namespace

void swiglu_forward(Ctx& ctx, const SwigluArgs& a) {
  check_shape(a.y, {a.x.dim(0), hidden(a.x)}, "swiglu y");
  check_device(ctx, "swiglu_forward", {&a.y, &a.x});
  SY_DISPATCH(ctx, swiglu_forward, ctx, a);
}

void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a) {
  check_shape(a.dy, {a.x.dim(0), hidden(a.x)}, "swiglu dy");
  check_shape(a.dx, a.x.shape(), "swiglu dx");
  check_device(ctx, "swiglu_backward", {&a.dx, &a.dy, &a.x});
  SY_DISPATCH(ctx, swiglu_backward, ctx, a);
}

}  // namespace sy::ops
