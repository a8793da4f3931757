#include "ops/rmsnorm.h"

#include "ops/backend.h"

namespace sy::ops {

void rmsnorm_forward(Ctx& ctx, const RmsNormArgs& a) {
  SY_CHECK(a.x.ndim() == 2, "rmsnorm: x " << shape_str(a.x.shape()) << " is not (N, C)");
  check_shape(a.y, a.x.shape(), "rmsnorm y");
  check_shape(a.rstd, {a.x.dim(0)}, "rmsnorm rstd");
  check_shape(a.w, {a.x.dim(1)}, "rmsnorm weight");
  check_device(ctx, "rmsnorm_forward", {&a.y, &a.rstd, &a.x, &a.w});
  SY_DISPATCH(ctx, rmsnorm_forward, ctx, a);
}

void rmsnorm_backward(Ctx& ctx, const RmsNormBackwardArgs& a) {
  SY_CHECK(a.x.ndim() == 2, "rmsnorm: x " << shape_str(a.x.shape()) << " is not (N, C)");
  check_shape(a.dy, a.x.shape(), "rmsnorm dy");
  check_shape(a.dx, a.x.shape(), "rmsnorm dx");
  check_shape(a.rstd, {a.x.dim(0)}, "rmsnorm rstd");
  check_shape(a.w, {a.x.dim(1)}, "rmsnorm weight");
  check_shape(a.dw, {a.x.dim(1)}, "rmsnorm dw");
  check_device(ctx, "rmsnorm_backward", {&a.dx, &a.dw, &a.dy, &a.x, &a.w, &a.rstd});
  SY_DISPATCH(ctx, rmsnorm_backward, ctx, a);
}

}  // namespace sy::ops
