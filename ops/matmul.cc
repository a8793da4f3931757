#include "ops/matmul.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check_shadow(Ctx& ctx, const Tensor* w16, const Tensor& w, const char* op) {
  if (!w16) return;
  check_dtype(*w16, DType::bf16, "matmul W's bf16 shadow");
  check_shape(*w16, w.shape(), "matmul W's bf16 shadow");
  check_device(ctx, op, {w16});
}
}  // namespace

void matmul_forward(Ctx& ctx, const MatmulArgs& a) {
  SY_CHECK(a.x.ndim() == 2 && a.w.ndim() == 2, "matmul: x " << shape_str(a.x.shape()) << ", W " << shape_str(a.w.shape()));
  const int64_t N = a.x.dim(0), K = a.x.dim(1), M = a.w.dim(a.w_transposed ? 0 : 1);
  check_shape(a.w, a.w_transposed ? Shape{M, K} : Shape{K, M}, a.w_transposed ? "matmul W (transposed)" : "matmul W");
  check_shape(a.y, {N, M}, "matmul y");
  if (a.b.defined()) check_shape(a.b, {M}, "matmul bias");
  SY_CHECK(a.x.dtype() == DType::f32 || (a.w_bf16 && a.x.dtype() == DType::bf16),
           "matmul_forward: x is " << dtype_name(a.x.dtype()) << "; f32, or bf16 in bf16 mode (already rounded)");
  SY_CHECK(a.y.dtype() == DType::f32 || (a.y.dtype() == DType::bf16 && a.w_bf16 && !a.accumulate),
           "matmul_forward: y is " << dtype_name(a.y.dtype()) << "; f32, or bf16 in bf16 mode when not accumulated");
  if (a.gelu) {
    SY_CHECK(!a.accumulate, "matmul_forward: the GELU epilogue writes y (accumulate false)");
    check_shape(*a.gelu, a.y.shape(), "matmul gelu");
    check_dtype(*a.gelu, a.y.dtype(), "matmul gelu (y's dtype)");
  }
  check_device(ctx, "matmul_forward", {&a.y, &a.x, &a.w, &a.b, a.gelu});
  check_shadow(ctx, a.w_bf16, a.w, "matmul_forward");
  SY_DISPATCH(ctx, matmul_forward, ctx, a);
}

void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a) {
  SY_CHECK(a.x.ndim() == 2 && a.w.ndim() == 2, "matmul: x " << shape_str(a.x.shape()) << ", W " << shape_str(a.w.shape()));
  const int64_t N = a.x.dim(0), K = a.x.dim(1), M = a.w.dim(a.w_transposed ? 0 : 1);
  check_shape(a.w, a.w_transposed ? Shape{M, K} : Shape{K, M}, a.w_transposed ? "matmul W (transposed)" : "matmul W");
  check_shape(a.dy, {N, M}, "matmul dy");
  if (a.dx) check_shape(*a.dx, a.x.shape(), "matmul dx");
  if (a.dw) check_shape(*a.dw, a.w.shape(), "matmul dW");
  if (a.db) check_shape(*a.db, {M}, "matmul db");
  SY_CHECK(a.x.dtype() == DType::f32 || (a.w_bf16 && a.x.dtype() == DType::bf16),
           "matmul_backward: x is " << dtype_name(a.x.dtype()) << "; f32, or bf16 in bf16 mode (the forward's x_bf16)");
  SY_CHECK(a.dy.dtype() == DType::f32 || (a.w_bf16 && a.dy.dtype() == DType::bf16),
           "matmul_backward: dy is " << dtype_name(a.dy.dtype()) << "; f32, or bf16 in bf16 mode (values that are bf16)");
  SY_CHECK(!a.dx || a.dx->dtype() == DType::f32 || (a.dx->dtype() == DType::bf16 && a.w_bf16 && !a.dx_accumulate),
           "matmul_backward: dx is " << dtype_name(a.dx->dtype())
                                     << "; f32, or bf16 in bf16 mode when written (dx_accumulate false)");
  if (a.dw) check_dtype(*a.dw, DType::f32, "matmul dW");
  if (a.db) check_dtype(*a.db, DType::f32, "matmul db");
  if (a.gelu_pre) {
    SY_CHECK(a.dx && !a.dx_accumulate, "matmul_backward: the GELU epilogue writes dx (dx_accumulate false)");
    check_shape(*a.gelu_pre, a.x.shape(), "matmul gelu_pre");
    check_dtype(*a.gelu_pre, a.dx->dtype(), "matmul gelu_pre (dx's dtype)");
  }
  check_device(ctx, "matmul_backward", {a.dx, a.dw, a.db, &a.dy, &a.x, &a.w, a.gelu_pre});
  check_shadow(ctx, a.w_bf16, a.w, "matmul_backward");
  SY_DISPATCH(ctx, matmul_backward, ctx, a);
}

}  // namespace sy::ops
