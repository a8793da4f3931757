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
  check_dtype(a.x, DType::f32, "swiglu x");
  SY_CHECK(a.y.dtype() == DType::f32 || a.y.dtype() == DType::bf16,
           "swiglu y: " << dtype_name(a.y.dtype()) << " (f32, or bf16: a bf16 GEMM's input)");
  check_device(ctx, "swiglu_forward", {&a.y, &a.x});
  SY_DISPATCH(ctx, swiglu_forward, ctx, a);
}

void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a) {
  check_shape(a.dy, {a.x.dim(0), hidden(a.x)}, "swiglu dy");
  check_shape(a.dx, a.x.shape(), "swiglu dx");
  check_dtype(a.x, DType::f32, "swiglu x");
  check_dtype(a.dy, DType::f32, "swiglu dy");
  SY_CHECK(a.dx.dtype() == DType::f32 || a.dx.dtype() == DType::bf16,
           "swiglu dx: " << dtype_name(a.dx.dtype()) << " (f32 accumulated, or bf16 written)");
  check_device(ctx, "swiglu_backward", {&a.dx, &a.dy, &a.x});
  SY_DISPATCH(ctx, swiglu_backward, ctx, a);
}

}  // namespace sy::ops
