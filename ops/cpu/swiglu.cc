#include "ops/swiglu.h"

#include <cmath>

namespace sy::ops::cpu {

void swiglu_forward(Ctx&, const SwigluArgs& a) {
  const int64_t N = a.x.dim(0), H = a.y.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const float* g = a.x.f32() + n * 2 * H;
    const float* u = g + H;
    float* y = a.y.f32() + n * H;
    for (int64_t i = 0; i < H; ++i) y[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
}

void swiglu_backward(Ctx&, const SwigluBackwardArgs& a) {
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
