#include "ops/gelu.h"

#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

// With u = sqrt(2/pi) (x + 0.044715 x^3) and s = sigmoid(2u) = 1 / (1 + e^-2u):
//   0.5 (1 + tanh u) = s,   0.5 (1 - tanh^2 u) = 2 s (1 - s) = 2 e^-2u s^2,
// so y = x s and dy/dx = s + 2 x e^-2u s^2 du/dx: one exp and one division per
// element, in a loop the compiler vectorises. -2u is clamped to [-80, 80],
// where s is already 0 or 1 in float and no term reaches a denormal.
namespace {
constexpr float kS2Pi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kC = 0.044715f;

inline float exp_minus_2u(float v) {
  float z = -2.f * kS2Pi * (v + kC * v * v * v);
  z = z < 80.f ? z : 80.f;
  z = z > -80.f ? z : -80.f;
  return exp_approx(z);
}

SY_VECTOR_CLONES void forward(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.f + exp_minus_2u(x[i]));
}

SY_VECTOR_CLONES void backward(float* dx, const float* dy, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float e = exp_minus_2u(v);
    const float s = 1.f / (1.f + e);
    const float du = kS2Pi * (1.f + 3.f * kC * v * v);
    dx[i] += dy[i] * (s + 2.f * v * e * s * s * du);
  }
}
}  // namespace

void gelu_forward(Ctx&, Tensor& y, const Tensor& x) { forward(y.f32(), x.f32(), x.numel()); }

void gelu_backward(Ctx&, Tensor& dx, const Tensor& dy, const Tensor& x) {
  backward(dx.f32(), dy.f32(), x.f32(), x.numel());
}

}  // namespace sy::ops::cpu
