#include "ops/layernorm.h"

#include <cmath>

namespace sy::ops::cpu {

void layernorm_forward(Ctx&, const LayerNormArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  const bool affine = a.w.defined();
  const float* xp = a.x.f32();
  float* yp = a.y.f32();
  const float* w = affine ? a.w.f32() : nullptr;
  const float* b = affine ? a.b.f32() : nullptr;
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = xp + n * C;
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
    v /= C;
    const float s = static_cast<float>(1.0 / std::sqrt(v + kLayerNormEps));
    a.mean.f32()[n] = static_cast<float>(m);
    a.rstd.f32()[n] = s;
    float* yr = yp + n * C;
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - static_cast<float>(m)) * s;
      yr[c] = affine ? xh * w[c] + b[c] : xh;
    }
  }
}

void layernorm_backward(Ctx&, const LayerNormBackwardArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  const bool affine = a.w.defined();
  const float* w = affine ? a.w.f32() : nullptr;
  float* dw = affine ? a.dw->f32() : nullptr;
  float* db = affine ? a.db->f32() : nullptr;
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = a.x.f32() + n * C;
    const float* dyr = a.dy.f32() + n * C;
    float* dxr = a.dx.f32() + n * C;
    const float m = a.mean.f32()[n], s = a.rstd.f32()[n];
    double gmean = 0, gxmean = 0;
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - m) * s;
      const float g = affine ? dyr[c] * w[c] : dyr[c];
      gmean += g;
      gxmean += g * xh;
    }
    gmean /= C;
    gxmean /= C;
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - m) * s;
      const float g = affine ? dyr[c] * w[c] : dyr[c];
      dxr[c] += s * (g - static_cast<float>(gmean) - xh * static_cast<float>(gxmean));
      if (affine) {
        dw[c] += dyr[c] * xh;
        db[c] += dyr[c];
      }
    }
  }
}

}  // namespace sy::ops::cpu
