// RMSNorm on CUDA: the functions of ops/cuda/rmsnorm_rows.h (tested on the
// host against the CPU reference) run by
//   forward:  one warp per row: the lane partials of sum x^2 in double,
//             combined by warp_sum's fixed butterfly; rstd, then y;
//   backward: one warp per row for dx (the row sum of dy w xhat, the same
//             way); dw += sum_n dy xhat by the fixed-order two-stage column
//             sum of common.cuh (the CPU's row order exactly for N <= 64;
//             8 columns a thread where C % 8 == 0, the same sums).
// No atomics anywhere: two runs are bitwise equal.
#include "ops/cuda/common.cuh"
#include "ops/cuda/rmsnorm_rows.h"
#include "ops/rmsnorm.h"

namespace sy::ops::cuda {

namespace rows = rmsnorm_rows;

namespace {
constexpr int kWarps = kBlock / 32;  // rows per block
static_assert(rows::kLanes == 32, "one warp per row");

struct RmsNormWeightGrad {  // the column terms of dw
  static constexpr int kOut = 1;
  const float* x;
  const float* dy;
  const float* rstd;
  int64_t C;
  __device__ void operator()(int64_t r, int64_t c, float* v) const {
    v[0] = rows::dw_term(dy[r * C + c], x[r * C + c], rstd[r]);
  }
  // 8 columns from 16-byte loads (column_sums' packs), the same term each
  __device__ void load8(int64_t r, int64_t c0, float* v) const {
    float xs[8], ds[8];
    load8_at(x + r * C + c0, xs);
    load8_at(dy + r * C + c0, ds);
    const float s = rstd[r];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = rows::dw_term(ds[j], xs[j], s);
  }
  bool vec_ok() const { return C % 8 == 0 && aligned16(x) && aligned16(dy); }
};
}  // namespace

static __global__ void rmsnorm_forward_kernel(float* y, float* rstd, const float* x, const float* w, int64_t N,
                                              int64_t C) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;  // the whole warp leaves together
  const float* xr = x + n * C;
  const float s = rows::rstd_of(warp_sum(rows::sq_partial(xr, C, lane)), C);
  if (lane == 0) rstd[n] = s;
  float* yr = y + n * C;
  for (int64_t c = lane; c < C; c += 32) yr[c] = rows::y_of(xr[c], s, w[c]);
}

static __global__ void rmsnorm_dx_kernel(float* dx, const float* dy, const float* x, const float* w,
                                         const float* rstd, int64_t N, int64_t C) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;
  const float *xr = x + n * C, *dyr = dy + n * C;
  const float s = rstd[n];
  const float gxmean = rows::gxmean_of(warp_sum(rows::gx_partial(dyr, w, xr, s, C, lane)), C);
  float* dxr = dx + n * C;
  for (int64_t c = lane; c < C; c += 32) dxr[c] += rows::dx_of(dyr[c], w[c], xr[c], s, gxmean);
}

void rmsnorm_forward(Ctx& ctx, const RmsNormArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  if (N == 0) return;
  rmsnorm_forward_kernel<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(
      a.y.data<float>(), a.rstd.data<float>(), a.x.data<float>(), a.w.data<float>(), N, C);
  CUDA_CHECK(cudaGetLastError());
}

void rmsnorm_backward(Ctx& ctx, const RmsNormBackwardArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  if (N == 0) return;
  rmsnorm_dx_kernel<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(a.dx.data<float>(), a.dy.data<float>(),
                                                                     a.x.data<float>(), a.w.data<float>(),
                                                                     a.rstd.data<float>(), N, C);
  CUDA_CHECK(cudaGetLastError());
  column_sums(ctx, RmsNormWeightGrad{a.x.data<float>(), a.dy.data<float>(), a.rstd.data<float>(), C}, N, C,
              ColumnOut{{a.dw.data<float>()}});
}

}  // namespace sy::ops::cuda
