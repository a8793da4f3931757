#include "ops/layernorm.h"

#include <cmath>

#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

// Row sums in eight float lanes (ops/cpu/vec_math.h) instead of one double
// accumulator, so every loop over a row vectorises; with w null, y = xhat.

namespace {

inline float combine(const float* acc) {
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

SY_VECTOR_CLONES void forward_rows(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                                   int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    float* yr = y + n * C;
    const float m = sum_lanes(xr, C) / static_cast<float>(C);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 8 <= C; c += 8)
      for (int j = 0; j < 8; ++j) acc[j] += (xr[c + j] - m) * (xr[c + j] - m);
    for (; c < C; ++c) acc[c & 7] += (xr[c] - m) * (xr[c] - m);
    const float s = 1.f / std::sqrt(combine(acc) / static_cast<float>(C) + kLayerNormEps);
    mean[n] = m;
    rstd[n] = s;
    if (w)
      for (c = 0; c < C; ++c) yr[c] = (xr[c] - m) * s * w[c] + b[c];
    else
      for (c = 0; c < C; ++c) yr[c] = (xr[c] - m) * s;
  }
}

// One row's backward; kAffine false: g = dy, and no dw, db.
template <bool kAffine>
inline void backward_row(float* dxr, float* dw, float* db, const float* dyr, const float* xr, const float* w, float m,
                         float s, int64_t C) {
  float ag[8] = {0, 0, 0, 0, 0, 0, 0, 0}, agx[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= C; c += 8)
    for (int j = 0; j < 8; ++j) {
      const float xh = (xr[c + j] - m) * s;
      const float g = kAffine ? dyr[c + j] * w[c + j] : dyr[c + j];
      ag[j] += g;
      agx[j] += g * xh;
    }
  for (; c < C; ++c) {
    const float xh = (xr[c] - m) * s;
    const float g = kAffine ? dyr[c] * w[c] : dyr[c];
    ag[c & 7] += g;
    agx[c & 7] += g * xh;
  }
  const float gmean = combine(ag) / static_cast<float>(C), gxmean = combine(agx) / static_cast<float>(C);
  for (c = 0; c < C; ++c) {
    const float xh = (xr[c] - m) * s;
    const float g = kAffine ? dyr[c] * w[c] : dyr[c];
    dxr[c] += s * (g - gmean - xh * gxmean);
    if (kAffine) {
      dw[c] += dyr[c] * xh;
      db[c] += dyr[c];
    }
  }
}

SY_VECTOR_CLONES void backward_rows(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                                    const float* mean, const float* rstd, int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n) {
    if (w)
      backward_row<true>(dx + n * C, dw, db, dy + n * C, x + n * C, w, mean[n], rstd[n], C);
    else
      backward_row<false>(dx + n * C, dw, db, dy + n * C, x + n * C, w, mean[n], rstd[n], C);
  }
}

}  // namespace

void layernorm_forward(Ctx&, const LayerNormArgs& a) {
  const bool affine = a.w.defined();
  forward_rows(a.y.f32(), a.mean.f32(), a.rstd.f32(), a.x.f32(), affine ? a.w.f32() : nullptr,
               affine ? a.b.f32() : nullptr, a.x.dim(0), a.x.dim(1));
}

void layernorm_backward(Ctx&, const LayerNormBackwardArgs& a) {
  const bool affine = a.w.defined();
  backward_rows(a.dx.f32(), affine ? a.dw->f32() : nullptr, affine ? a.db->f32() : nullptr, a.dy.f32(), a.x.f32(),
                affine ? a.w.f32() : nullptr, a.mean.f32(), a.rstd.f32(), a.x.dim(0), a.x.dim(1));
}

}  // namespace sy::ops::cpu
