#include "ops/elementwise.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const char* op, const Tensor& y, const Tensor& x) {
  check_shape(x, y.shape(), op);
  check_dtype(y, DType::f32, op);
  check_dtype(x, DType::f32, op);
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
  check_shape(x, y.shape(), "to_bf16");
  check_dtype(y, DType::bf16, "to_bf16");
  check_dtype(x, DType::f32, "to_bf16");
  check_device(ctx, "to_bf16", {&y, &x});
  SY_DISPATCH(ctx, to_bf16, ctx, y, x);
}

void to_f32(Ctx& ctx, Tensor& y, const Tensor& x) {
  check_shape(x, y.shape(), "to_f32");
  check_dtype(y, DType::f32, "to_f32");
  check_dtype(x, DType::bf16, "to_f32");
  check_device(ctx, "to_f32", {&y, &x});
  SY_DISPATCH(ctx, to_f32, ctx, y, x);
}

}  // namespace sy::ops
