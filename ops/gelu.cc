#include "ops/gelu.h"

#include "ops/backend.h"

namespace sy::ops {

void gelu_forward(Ctx& ctx, Tensor& y, const Tensor& x) {
  check_shape(y, x.shape(), "gelu y");
  check_dtype(x, DType::f32, "gelu x");
  SY_CHECK(y.dtype() == DType::f32 || y.dtype() == DType::bf16, "gelu y: " << dtype_name(y.dtype()) << " (f32 or bf16)");
  check_device(ctx, "gelu_forward", {&y, &x});
  SY_DISPATCH(ctx, gelu_forward, ctx, y, x);
}

void gelu_backward(Ctx& ctx, Tensor& dx, const Tensor& dy, const Tensor& x) {
  check_shape(dy, x.shape(), "gelu dy");
  check_shape(dx, x.shape(), "gelu dx");
  check_dtype(x, DType::f32, "gelu x");
  check_dtype(dy, DType::f32, "gelu dy");
  SY_CHECK(dx.dtype() == DType::f32 || dx.dtype() == DType::bf16,
           "gelu dx: " << dtype_name(dx.dtype()) << " (f32 accumulated, or bf16 written)");
  check_device(ctx, "gelu_backward", {&dx, &dy, &x});
  SY_DISPATCH(ctx, gelu_backward, ctx, dx, dy, x);
}

}  // namespace sy::ops
