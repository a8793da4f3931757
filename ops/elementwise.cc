#include "ops/elementwise.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
// y and x of one shape on ctx's device, y of dtype `to` and x of `from`.
void check(Ctx& ctx, const char* op, const Tensor& y, const Tensor& x, DType to = DType::f32,
           DType from = DType::f32) {
  check_shape(x, y.shape(), op);
  check_dtype(y, to, op);
  check_dtype(x, from, op);
  check_device(ctx, op, {&y, &x});
}
}  // namespace

void add_into(Ctx& ctx, Tensor& y, const Tensor& x) {
  check(ctx, "add_into", y, x);
  SY_DISPATCH(ctx, add_into, ctx, y, x);
}

void mul_into(Ctx& ctx, Tensor& y, const Tensor& x) {
  check(ctx, "mul_into", y, x);
  SY_DISPATCH(ctx, mul_into, ctx, y, x);
}

void sigmoid(Ctx& ctx, Tensor& y, const Tensor& x) {
  check(ctx, "sigmoid", y, x);
  SY_DISPATCH(ctx, sigmoid, ctx, y, x);
}

void scale(Ctx& ctx, Tensor& y, float s) {
  check_dtype(y, DType::f32, "scale");
  check_device(ctx, "scale", {&y});
  SY_DISPATCH(ctx, scale, ctx, y, s);
}

void to_bf16(Ctx& ctx, Tensor& y, const Tensor& x) {
  check(ctx, "to_bf16", y, x, DType::bf16, DType::f32);
  SY_DISPATCH(ctx, to_bf16, ctx, y, x);
}

void to_f32(Ctx& ctx, Tensor& y, const Tensor& x) {
  check(ctx, "to_f32", y, x, DType::f32, DType::bf16);
  SY_DISPATCH(ctx, to_f32, ctx, y, x);
}

}  // namespace sy::ops
