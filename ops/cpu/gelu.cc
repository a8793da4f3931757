#include "ops/gelu.h"

#include "ops/cpu/bf16_operand.h"
#include "ops/cpu/gelu_math.h"
#include "ops/elementwise.h"

namespace sy::ops::cpu {

namespace {
SY_VECTOR_CLONES void forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_value(x[i]);
}

SY_VECTOR_CLONES void backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * gelu_derivative(x[i]);
}
}  // namespace

void gelu_forward(Ctx& ctx, Tensor& y, const Tensor& x_in) {
  const Tensor x = widened(x_in);
  if (y.dtype() == DType::bf16) {  // the fp32 values, rounded (what a bf16 GEMM would round them to)
    Tensor y32 = Tensor::empty(x.shape(), DType::f32, ctx);
    forward(y32.f32(), x.f32(), x.numel());
    ops::to_bf16(ctx, y, y32);
    return;
  }
  forward(y.f32(), x.f32(), x.numel());
}

void gelu_backward(Ctx& ctx, Tensor& dx, const Tensor& dy_in, const Tensor& x_in) {
  const Tensor dy = widened(dy_in), x = widened(x_in);
  if (dx.dtype() == DType::bf16) {  // written: the fp32 gradient from zero, rounded
    Tensor d32 = Tensor::zeros(x.shape(), DType::f32, ctx);
    backward(d32.f32(), dy.f32(), x.f32(), x.numel());
    ops::to_bf16(ctx, dx, d32);
    return;
  }
  backward(dx.f32(), dy.f32(), x.f32(), x.numel());
}

}  // namespace sy::ops::cpu
