#include "ops/gelu.h"

#include <cmath>

namespace sy::ops::cpu {

namespace {
constexpr float kS2Pi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kC = 0.044715f;
}  // namespace

void gelu_forward(Ctx&, Tensor& y, const Tensor& x) {
  const float* xp = x.f32();
  float* yp = y.f32();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = xp[i];
    yp[i] = 0.5f * v * (1.f + std::tanh(kS2Pi * (v + kC * v * v * v)));
  }
}

void gelu_backward(Ctx&, Tensor& dx, const Tensor& dy, const Tensor& x) {
  const float* xp = x.f32();
  const float* g = dy.f32();
  float* d = dx.f32();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = xp[i];
    const float t = std::tanh(kS2Pi * (v + kC * v * v * v));
    const float dd = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kS2Pi * (1.f + 3.f * kC * v * v);
    d[i] += g[i] * dd;
  }
}

}  // namespace sy::ops::cpu
