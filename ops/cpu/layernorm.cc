#include "ops/layernorm.h"

#include <cmath>
#include <vector>

#include "ops/cpu/vec_math.h"
#include "ops/elementwise.h"

namespace sy::ops::cpu {

// Row sums in eight float lanes (ops/cpu/vec_math.h) instead of one double
// accumulator, so every loop over a row vectorises; with w null, y = xhat.

namespace {

// Row by row: mean by lanes, x - mean into y, the variance as y . y by lanes,
// then y scaled (and the affine map applied) in place.
SY_VECTOR_CLONES void forward_rows(float* y, float* mean, float* rstd, const float* x, const float* w, const float* b,
                                   int64_t N, int64_t C) {
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    float* yr = y + n * C;
    const float m = sum_lanes(xr, C) / static_cast<float>(C);
    for (int64_t c = 0; c < C; ++c) yr[c] = xr[c] - m;
    const float s = 1.f / std::sqrt(dot_lanes(yr, yr, C) / static_cast<float>(C) + kLayerNormEps);
    mean[n] = m;
    rstd[n] = s;
    if (w)
      for (int64_t c = 0; c < C; ++c) yr[c] = yr[c] * s * w[c] + b[c];
    else
      for (int64_t c = 0; c < C; ++c) yr[c] = yr[c] * s;
  }
}

// Row by row: g = dy * w and xhat into two row buffers, their sum and dot
// product by lanes, then dx, dw, db; with w null, g = dy and no dw, db.
SY_VECTOR_CLONES void backward_rows(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                                    const float* mean, const float* rstd, int64_t N, int64_t C, float* g, float* xh) {
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x + n * C;
    const float* dyr = dy + n * C;
    float* dxr = dx + n * C;
    const float m = mean[n], s = rstd[n];
    for (int64_t c = 0; c < C; ++c) xh[c] = (xr[c] - m) * s;
    if (w)
      for (int64_t c = 0; c < C; ++c) g[c] = dyr[c] * w[c];
    else
      for (int64_t c = 0; c < C; ++c) g[c] = dyr[c];
    const float gmean = sum_lanes(g, C) / static_cast<float>(C);
    const float gxmean = dot_lanes(g, xh, C) / static_cast<float>(C);
    for (int64_t c = 0; c < C; ++c) dxr[c] += s * (g[c] - gmean - xh[c] * gxmean);
    if (w)
      for (int64_t c = 0; c < C; ++c) {
        dw[c] += dyr[c] * xh[c];
        db[c] += dyr[c];
      }
  }
}

}  // namespace

void layernorm_forward(Ctx& ctx, const LayerNormArgs& a) {
  const bool affine = a.w.defined(), bf16 = a.y.dtype() == DType::bf16;
  // bf16 y: the fp32 values, rounded (what a bf16 GEMM would round them to)
  Tensor y = bf16 ? Tensor::empty(a.x.shape(), DType::f32, ctx) : a.y;
  forward_rows(y.f32(), a.mean.f32(), a.rstd.f32(), a.x.f32(), affine ? a.w.f32() : nullptr,
               affine ? a.b.f32() : nullptr, a.x.dim(0), a.x.dim(1));
  if (bf16) ops::to_bf16(ctx, a.y, y);
}

void layernorm_backward(Ctx&, const LayerNormBackwardArgs& a) {
  const bool affine = a.w.defined();
  const int64_t C = a.x.dim(1);
  std::vector<float> row(2 * C);  // g, xhat of one row
  backward_rows(a.dx.f32(), affine ? a.dw->f32() : nullptr, affine ? a.db->f32() : nullptr, a.dy.f32(), a.x.f32(),
                affine ? a.w.f32() : nullptr, a.mean.f32(), a.rstd.f32(), a.x.dim(0), C, row.data(), row.data() + C);
}

}  // namespace sy::ops::cpu
