#include "ops/gelu.h"

#include "ops/backend.h"

namespace sy::ops {

void gelu_forward(Ctx& ctx, Tensor& y, const Tensor& x) {
  check_shape(y, x.shape(), "gelu y");
  SY_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, "gelu x: " << dtype_name(x.dtype()) << " (f32 or bf16)");
  SY_CHECK(y.dtype() == DType::f32 || y.dtype() == DType::bf16, "gelu y: " << dtype_name(y.dtype()) << " (f32 or bf16)");
  check_device(ctx, "gelu_forward", {&y, &x});
  SY_DISPATCH(ctx, gelu_forward, ctx, y, x);
}

void gelu_backward(Ctx& ctx, Tensor& dx, const Tensor& dy, const Tensor& x) {
  check_shape(dy, x.shape(), "gelu dy");
  check_shape(dx, x.shape(), "gelu dx");
  SY_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, "gelu x: " << dtype_name(x.dtype()) << " (f32 or bf16)");
  SY_CHECK(dy.dtype() == DType::f32 || dy.dtype() == DType::bf16,
           "gelu dy: " << dtype_name(dy.dtype()) << " (f32 or bf16)");
  SY_CHECK(dx.dtype() == DType::f32 || dx.dtype() == DType::bf16,
           "gelu dx: " << dtype_name(dx.dtype()) << " (f32 accumulated, or bf16 written)");
  check_device(ctx, "gelu_backward", {&dx, &dy, &x});
  SY_DISPATCH(ctx, gelu_backward, ctx, dx, dy, x);
}

}  // namespace sy::ops
