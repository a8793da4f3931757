#include "ops/layernorm.h"

#include <cmath>

namespace sy::ops {

void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                       const Tensor& b) {
  const int64_t N = x.dim(0), C = x.dim(1);
  check_shape(y, x.shape(), "layernorm y");
  check_shape(mean, {N}, "layernorm mean");
  check_shape(rstd, {N}, "layernorm rstd");
  const bool affine = w.defined();
  if (affine) {
    check_shape(w, {C}, "layernorm weight");
    check_shape(b, {C}, "layernorm bias");
  }
  const float* xp = x.f32();
  float* yp = y.f32();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = xp + n * C;
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; ++c) m += xr[c];
    m /= C;
    for (int64_t c = 0; c < C; ++c) v += (xr[c] - m) * (xr[c] - m);
    v /= C;
    const float s = static_cast<float>(1.0 / std::sqrt(v + kLayerNormEps));
    mean.f32()[n] = static_cast<float>(m);
    rstd.f32()[n] = s;
    float* yr = yp + n * C;
    for (int64_t c = 0; c < C; ++c) {
      float xh = (xr[c] - static_cast<float>(m)) * s;
      yr[c] = affine ? xh * w.f32()[c] + b.f32()[c] : xh;
    }
  }
}

void layernorm_backward(Tensor& dx, Tensor* dw, Tensor* db, const Tensor& dy, const Tensor& x,
                        const Tensor& w, const Tensor& mean, const Tensor& rstd) {
  const int64_t N = x.dim(0), C = x.dim(1);
  check_shape(dy, x.shape(), "layernorm dy");
  check_shape(dx, x.shape(), "layernorm dx");
  const bool affine = w.defined();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x.f32() + n * C;
    const float* dyr = dy.f32() + n * C;
    float* dxr = dx.f32() + n * C;
    const float m = mean.f32()[n], s = rstd.f32()[n];
    double gmean = 0, gxmean = 0;
    for (int64_t c = 0; c < C; ++c) {
      float xh = (xr[c] - m) * s;
      float g = affine ? dyr[c] * w.f32()[c] : dyr[c];
      gmean += g;
      gxmean += g * xh;
    }
    gmean /= C;
    gxmean /= C;
    for (int64_t c = 0; c < C; ++c) {
      float xh = (xr[c] - m) * s;
      float g = affine ? dyr[c] * w.f32()[c] : dyr[c];
      dxr[c] += s * (g - static_cast<float>(gmean) - xh * static_cast<float>(gxmean));
      if (affine) {
        dw->f32()[c] += dyr[c] * xh;
        db->f32()[c] += dyr[c];
      }
    }
  }
}

}  // namespace sy::ops
