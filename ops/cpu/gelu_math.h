// GELU (tanh approximation, ops/gelu.h) per element, shared by the GELU op
// and the expert FFN's fused backward. With u = sqrt(2/pi) (x + 0.044715 x^3)
// and s = sigmoid(2u) = 1 / (1 + e^-2u):
//   0.5 (1 + tanh u) = s,   0.5 (1 - tanh^2 u) = 2 s (1 - s) = 2 e^-2u s^2,
// so y = x s and dy/dx = s + 2 x e^-2u s^2 du/dx: one exp and one division per
// element, in loops the compiler vectorises. -2u is clamped to [-80, 80],
// where s is already 0 or 1 in float and no term reaches a denormal.
//
// Internal to ops/cpu/.
#pragma once
#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

namespace gelu_detail {
constexpr float kS2Pi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kC = 0.044715f;

inline float exp_minus_2u(float v) {
  float z = -2.f * kS2Pi * (v + kC * v * v * v);
  z = z < 80.f ? z : 80.f;
  z = z > -80.f ? z : -80.f;
  return exp_approx(z);
}
}  // namespace gelu_detail

inline float gelu_value(float v) { return v / (1.f + gelu_detail::exp_minus_2u(v)); }

inline float gelu_derivative(float v) {
  using namespace gelu_detail;
  const float e = exp_minus_2u(v);
  const float s = 1.f / (1.f + e);
  const float du = kS2Pi * (1.f + 3.f * kC * v * v);
  return s + 2.f * v * e * s * s * du;
}

// Both from one exp: gelu_value(v) and gelu_derivative(v), bit for bit.
inline void gelu_value_and_derivative(float v, float& y, float& d) {
  using namespace gelu_detail;
  const float e = exp_minus_2u(v);
  y = v / (1.f + e);
  const float s = 1.f / (1.f + e);
  const float du = kS2Pi * (1.f + 3.f * kC * v * v);
  d = s + 2.f * v * e * s * s * du;
}

}  // namespace sy::ops::cpu
