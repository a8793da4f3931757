#include "ops/gelu.h"

#include <cmath>

namespace sy::ops {

namespace {
constexpr float kS2Pi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kC = 0.044715f;
}  // namespace

void gelu_forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    y[i] = 0.5f * v * (1.f + std::tanh(kS2Pi * (v + kC * v * v * v)));
  }
}

void gelu_backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    float t = std::tanh(kS2Pi * (v + kC * v * v * v));
    float d = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kS2Pi * (1.f + 3.f * kC * v * v);
    dx[i] += dy[i] * d;
  }
}

void gelu_forward(Tensor& y, const Tensor& x) {
  check_shape(y, x.shape(), "gelu y");
  gelu_forward(y.f32(), x.f32(), x.numel());
}

void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  check_shape(dy, x.shape(), "gelu dy");
  check_shape(dx, x.shape(), "gelu dx");
  gelu_backward(dx.f32(), dy.f32(), x.f32(), x.numel());
}

}  // namespace sy::ops
