#include "ops/swiglu.h"

#include <cmath>

#include "ops/elementwise.h"

namespace sy::ops::cpu {

void swiglu_forward(Ctx& ctx, const SwigluArgs& a) {
  if (a.y.dtype() == DType::bf16) {  // the fp32 values, rounded
    Tensor y32 = Tensor::empty(a.y.shape(), DType::f32, ctx);
    swiglu_forward(ctx, {y32, a.x});
    ops::to_bf16(ctx, a.y, y32);
    return;
  }
  const int64_t N = a.x.dim(0), H = a.y.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const float* g = a.x.f32() + n * 2 * H;
    const float* u = g + H;
    float* y = a.y.f32() + n * H;
    for (int64_t i = 0; i < H; ++i) y[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
}

void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a) {
  if (a.dx.dtype() == DType::bf16) {  // written: the fp32 gradient from zero, rounded
    Tensor d32 = Tensor::zeros(a.dx.shape(), DType::f32, ctx);
    swiglu_backward(ctx, {d32, a.dy, a.x});
    ops::to_bf16(ctx, a.dx, d32);
    return;
  }
  const int64_t N = a.x.dim(0), H = a.dy.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const float* g = a.x.f32() + n * 2 * H;
    const float* u = g + H;
    const float* dy = a.dy.f32() + n * H;
    float* dg = a.dx.f32() + n * 2 * H;
    float* du = dg + H;
    for (int64_t i = 0; i < H; ++i) {
      const float s = 1.f / (1.f + std::exp(-g[i]));
      dg[i] += dy[i] * u[i] * s * (1.f + g[i] * (1.f - s));
      du[i] += dy[i] * g[i] * s;
    }
  }
}

}  // namespace sy::ops::cpu
