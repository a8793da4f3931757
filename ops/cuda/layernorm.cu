// Layer norm on CUDA.
//
// forward:  one warp per row. mean and variance are summed in double (lane
//           partials in index order, then a fixed butterfly), as the CPU does,
//           and stored as fp32 mean/rstd; y = (x - mean) rstd [* w + b].
// backward: one warp per row for dx (the two row means of g = dy*w and g*xhat
//           in double, the same way); dw += sum_n dy*xhat and db += sum_n dy by
//           the fixed-order two-stage column sum of common.cuh. No atomics
//           anywhere: two runs are bitwise equal.
// Templated on the storage types of x (fp32 now) and y (fp32, or bf16 for a
// bf16 GEMM's input: the fp32 value rounded as it is stored).
#include "ops/cuda/common.cuh"
#include "ops/layernorm.h"

namespace sy::ops::cuda {

namespace {
constexpr int kWarps = kBlock / 32;  // rows per block

template <class T>
struct LayerNormGrads {  // column terms of dw and db
  static constexpr int kOut = 2;
  const T* x;
  const float* dy;
  const float* mean;
  const float* rstd;
  int64_t C;
  __device__ void operator()(int64_t r, int64_t c, float* v) const {
    const float xh = (to_float(x[r * C + c]) - mean[r]) * rstd[r];
    v[0] = dy[r * C + c] * xh;
    v[1] = dy[r * C + c];
  }
};
}  // namespace

template <class T, class TY>
static __global__ void layernorm_forward_kernel(TY* y, float* mean, float* rstd, const T* x, const float* w,
                                                const float* b, int64_t N, int64_t C) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;  // the whole warp leaves together
  const T* xr = x + n * C;
  double s = 0;
  for (int64_t c = lane; c < C; c += 32) s += to_float(xr[c]);
  const double m = warp_sum(s) / C;
  double v = 0;
  for (int64_t c = lane; c < C; c += 32) {
    const double d = to_float(xr[c]) - m;
    v += d * d;
  }
  v = warp_sum(v) / C;
  const float rs = static_cast<float>(1.0 / sqrt(v + kLayerNormEps));
  const float mf = static_cast<float>(m);
  if (lane == 0) mean[n] = mf, rstd[n] = rs;
  TY* yr = y + n * C;
  for (int64_t c = lane; c < C; c += 32) {
    const float xh = (to_float(xr[c]) - mf) * rs;
    yr[c] = from_float<TY>(w ? xh * w[c] + b[c] : xh);
  }
}

template <class T>
static __global__ void layernorm_dx_kernel(float* dx, const float* dy, const T* x, const float* w, const float* mean,
                                           const float* rstd, int64_t N, int64_t C) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= N) return;
  const T* xr = x + n * C;
  const float* dyr = dy + n * C;
  const float m = mean[n], s = rstd[n];
  double gsum = 0, gxsum = 0;
  for (int64_t c = lane; c < C; c += 32) {
    const float xh = (to_float(xr[c]) - m) * s;
    const float g = w ? dyr[c] * w[c] : dyr[c];
    gsum += g;
    gxsum += g * xh;
  }
  const float gmean = static_cast<float>(warp_sum(gsum) / C);
  const float gxmean = static_cast<float>(warp_sum(gxsum) / C);
  float* dxr = dx + n * C;
  for (int64_t c = lane; c < C; c += 32) {
    const float xh = (to_float(xr[c]) - m) * s;
    const float g = w ? dyr[c] * w[c] : dyr[c];
    dxr[c] += s * (g - gmean - xh * gxmean);
  }
}

void layernorm_forward(Ctx& ctx, const LayerNormArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  if (N == 0) return;
  const bool affine = a.w.defined();
  const float *w = affine ? a.w.data<float>() : nullptr, *b = affine ? a.b.data<float>() : nullptr;
  if (a.y.dtype() == DType::bf16)  // y rounded as it is written (a bf16 GEMM's input)
    layernorm_forward_kernel<float, __nv_bfloat16><<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(
        elems<Bf16>(a.y), a.mean.data<float>(), a.rstd.data<float>(), a.x.data<float>(), w, b, N, C);
  else
    layernorm_forward_kernel<float, float><<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(
        a.y.data<float>(), a.mean.data<float>(), a.rstd.data<float>(), a.x.data<float>(), w, b, N, C);
  CUDA_CHECK(cudaGetLastError());
}

void layernorm_backward(Ctx& ctx, const LayerNormBackwardArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  if (N == 0) return;
  const bool affine = a.w.defined();
  layernorm_dx_kernel<float><<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(
      a.dx.data<float>(), a.dy.data<float>(), a.x.data<float>(), affine ? a.w.data<float>() : nullptr,
      a.mean.data<float>(), a.rstd.data<float>(), N, C);
  CUDA_CHECK(cudaGetLastError());
  if (affine)
    column_sums(ctx,
                LayerNormGrads<float>{a.x.data<float>(), a.dy.data<float>(), a.mean.data<float>(),
                                      a.rstd.data<float>(), C},
                N, C, ColumnOut{{a.dw->data<float>(), a.db->data<float>()}});
}

}  // namespace sy::ops::cuda
