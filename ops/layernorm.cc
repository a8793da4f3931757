#include "ops/layernorm.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check_affine(const Tensor& w, const Tensor& b, int64_t C) {
  if (!w.defined()) return;
  check_shape(w, {C}, "layernorm weight");
  check_shape(b, {C}, "layernorm bias");
}
}  // namespace

void layernorm_forward(Ctx& ctx, const LayerNormArgs& a) {
  SY_CHECK(a.x.ndim() == 2, "layernorm: x " << shape_str(a.x.shape()) << " is not (N, C)");
  const int64_t N = a.x.dim(0);
  check_shape(a.y, a.x.shape(), "layernorm y");
  check_dtype(a.x, DType::f32, "layernorm x");
  SY_CHECK(a.y.dtype() == DType::f32 || a.y.dtype() == DType::bf16,
           "layernorm y: " << dtype_name(a.y.dtype()) << " (f32 or bf16)");
  check_shape(a.mean, {N}, "layernorm mean");
  check_shape(a.rstd, {N}, "layernorm rstd");
  check_affine(a.w, a.b, a.x.dim(1));
  check_device(ctx, "layernorm_forward", {&a.y, &a.mean, &a.rstd, &a.x, &a.w, &a.b});
  SY_DISPATCH(ctx, layernorm_forward, ctx, a);
}

void layernorm_backward(Ctx& ctx, const LayerNormBackwardArgs& a) {
  SY_CHECK(a.x.ndim() == 2, "layernorm: x " << shape_str(a.x.shape()) << " is not (N, C)");
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  check_shape(a.dy, a.x.shape(), "layernorm dy");
  check_shape(a.dx, a.x.shape(), "layernorm dx");
  check_shape(a.mean, {N}, "layernorm mean");
  check_shape(a.rstd, {N}, "layernorm rstd");
  SY_CHECK(a.w.defined() == (a.dw != nullptr && a.db != nullptr),
           "layernorm backward: dw and db are given exactly when the weights are");
  if (a.w.defined()) {
    check_shape(a.w, {C}, "layernorm weight");
    check_shape(*a.dw, {C}, "layernorm dw");
    check_shape(*a.db, {C}, "layernorm db");
  }
  check_device(ctx, "layernorm_backward", {&a.dx, a.dw, a.db, &a.dy, &a.x, &a.w, &a.mean, &a.rstd});
  SY_DISPATCH(ctx, layernorm_backward, ctx, a);
}

}  // namespace sy::ops
