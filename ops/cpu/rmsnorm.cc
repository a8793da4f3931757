#include "ops/rmsnorm.h"

#include <cmath>

namespace sy::ops::cpu {

void rmsnorm_forward(Ctx&, const RmsNormArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  const float* w = a.w.f32();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = a.x.f32() + n * C;
    float* yr = a.y.f32() + n * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const float s = static_cast<float>(1.0 / std::sqrt(ss / C + kRmsNormEps));
    a.rstd.f32()[n] = s;
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] * s * w[c];
  }
}

void rmsnorm_backward(Ctx&, const RmsNormBackwardArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  const float* w = a.w.f32();
  float* dw = a.dw.f32();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = a.x.f32() + n * C;
    const float* dyr = a.dy.f32() + n * C;
    float* dxr = a.dx.f32() + n * C;
    const float s = a.rstd.f32()[n];
    double gx = 0;
    for (int64_t c = 0; c < C; ++c) gx += static_cast<double>(dyr[c]) * w[c] * xr[c] * s;
    const float gxmean = static_cast<float>(gx / C);
    for (int64_t c = 0; c < C; ++c) {
      const float xh = xr[c] * s;
      dxr[c] += s * (dyr[c] * w[c] - xh * gxmean);
      dw[c] += dyr[c] * xh;
    }
  }
}

}  // namespace sy::ops::cpu
