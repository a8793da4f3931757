// RMSNorm on CUDA (equations in ops/rmsnorm.h) as plain functions of one
// lane of a row or one element: ops/cuda/rmsnorm.cu runs them with one warp
// per row (32 lanes, lane l taking columns l, l+32, ...; the lane partials
// combined by warp_sum's butterfly); tests/model_options_rows_test.cc runs the
// same functions on the host with that butterfly emulated, against the CPU
// reference. No CUDA headers: SY_HD is __host__ __device__ under nvcc only.
//
//   forward   ss = sum_c x_c^2 (double, as the CPU)    rstd = 1 / sqrt(ss / C + eps)
//             y_c = x_c rstd w_c
//   backward  gx = sum_c dy_c w_c x_c rstd (double)    dx_c += rstd (dy_c w_c - xhat_c gx / C)
//             dw_c += sum_n dy_nc xhat_nc (a column sum in row order, common.cuh)
#pragma once
#include <math.h>

#include <cstdint>

#include "ops/rmsnorm.h"

#include "ops/cuda/host_device.h"  // SY_HD

namespace sy::ops::rmsnorm_rows {

constexpr int kLanes = 32;  // one warp per row

// Lane `lane`'s share of sum_c x_c^2 over the row (columns lane, lane + kLanes, ...).
SY_HD inline double sq_partial(const float* x, int64_t C, int lane) {
  double s = 0;
  for (int64_t c = lane; c < C; c += kLanes) s += static_cast<double>(x[c]) * x[c];
  return s;
}

SY_HD inline float rstd_of(double ss, int64_t C) {
  return static_cast<float>(1.0 / sqrt(ss / static_cast<double>(C) + kRmsNormEps));
}

SY_HD inline float y_of(float x, float rstd, float w) { return x * rstd * w; }

// Lane `lane`'s share of sum_c dy_c w_c x_c rstd (in double, the CPU's order of products).
SY_HD inline double gx_partial(const float* dy, const float* w, const float* x, float rstd, int64_t C, int lane) {
  double s = 0;
  for (int64_t c = lane; c < C; c += kLanes) s += static_cast<double>(dy[c]) * w[c] * x[c] * rstd;
  return s;
}

SY_HD inline float gxmean_of(double gx, int64_t C) { return static_cast<float>(gx / static_cast<double>(C)); }

// The term added to dx_c.
SY_HD inline float dx_of(float dy, float w, float x, float rstd, float gxmean) {
  const float xh = x * rstd;
  return rstd * (dy * w - xh * gxmean);
}

// Row n's term of dw_c.
SY_HD inline float dw_term(float dy, float x, float rstd) { return dy * (x * rstd); }

}  // namespace sy::ops::rmsnorm_rows
