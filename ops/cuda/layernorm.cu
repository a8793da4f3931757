// Layer norm on CUDA.
//
// forward:  one warp per row (rows of up to 64 values: 4 to 16 lanes a row,
//           several rows a warp; below). mean and variance are summed in double (lane
//           partials in index order, then a fixed butterfly), as the CPU does,
//           and stored as fp32 mean/rstd; y = (x - mean) rstd [* w + b].
//           Rows of up to 2048 values, a multiple of 4: the row held in
//           registers, read once in 16-byte vectors (layernorm_forward_regs).
// backward: one warp per row for dx (the two row means of g = dy*w and g*xhat
//           in double, the same way); dw += sum_n dy*xhat and db += sum_n dy in
//           fixed order, no atomics anywhere: two runs are bitwise equal.
//           Rows of up to 2048 values, more than one chunk of 64 rows: the
//           column terms are summed as dx is made, in the same pass (each
//           lane's columns lane + 32 k in registers, the block's warps added
//           in warp order), a partial per chunk of 64 rows that common.cuh's
//           column_sum_finish adds to dw, db. Else (or without w) dx alone,
//           and dw, db by column_sums over x and dy again: the pass the fused
//           kernel saves reads x and dy a second time, a third of the
//           backward's traffic.
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

// Rows whose values fit in a warp's registers (C a multiple of 4, up to
// kLnRegCols; the pointers 16-byte aligned): the row is read once, in 16-byte
// vectors (a row's L lanes, lane l of them holding vectors l + L k, k < NV;
// rows of up to 64 values take L = 4, 8 or 16 lanes, 32 / L rows a warp),
// and the mean, the variance and y come from the registers, where layernorm_forward_kernel
// reads the row three times, 4 bytes a lane (at 16384 x 1024 it ran at 47%
// of the copy rate). The same arithmetic: the sums in double, each lane's
// values in its own order, then warp_sum (a lane's order differs, so the
// double sums may differ in their last bits; mean and rstd are fp32).
constexpr int kLnRegCols = 2048;  // 16 vectors a lane

template <class TY>
__device__ __forceinline__ void store4(TY* p, float a, float b, float c, float d);
template <>
__device__ __forceinline__ void store4<float>(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
template <>
__device__ __forceinline__ void store4<__nv_bfloat16>(__nv_bfloat16* p, float a, float b, float c, float d) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;  // (8 bytes: C a multiple of 4)
}

template <class TY, int NV, int L>
static __global__ void __launch_bounds__(kBlock)
    layernorm_forward_regs(TY* y, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t N,
                           int64_t C) {
  constexpr int kRowsPerBlock = kBlock / L;
  const int64_t n = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / L;
  const int lane = threadIdx.x % L;
  // (A warp's rows past N still take part in its shuffles: no early exit.)
  const int64_t nv = n < N ? C / 4 : 0;
  const float4* xr = reinterpret_cast<const float4*>(x + (n < N ? n : 0) * C);
  float4 v[NV];
#pragma unroll
  for (int k = 0; k < NV; ++k) v[k] = lane + L * k < nv ? xr[lane + L * k] : make_float4(0.f, 0.f, 0.f, 0.f);
  double s = 0;
#pragma unroll
  for (int k = 0; k < NV; ++k) {  // (vectors past the row hold zeros: they add nothing)
    s += v[k].x;
    s += v[k].y;
    s += v[k].z;
    s += v[k].w;
  }
  const double m = warp_sum<double, L>(s) / C;
  double q = 0;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    if (lane + L * k >= nv) break;
    const double d0 = v[k].x - m, d1 = v[k].y - m, d2 = v[k].z - m, d3 = v[k].w - m;
    q += d0 * d0;
    q += d1 * d1;
    q += d2 * d2;
    q += d3 * d3;
  }
  q = warp_sum<double, L>(q) / C;
  if (n >= N) return;  // (past the shuffles)
  const float rs = static_cast<float>(1.0 / sqrt(q + kLayerNormEps));
  const float mf = static_cast<float>(m);
  if (lane == 0) mean[n] = mf, rstd[n] = rs;
  TY* yr = y + n * C;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const int64_t i = lane + L * k;
    if (i >= nv) break;
    float a0 = (v[k].x - mf) * rs, a1 = (v[k].y - mf) * rs, a2 = (v[k].z - mf) * rs, a3 = (v[k].w - mf) * rs;
    if (w) {
      const float4 wv = reinterpret_cast<const float4*>(w)[i], bv = reinterpret_cast<const float4*>(b)[i];
      a0 = a0 * wv.x + bv.x, a1 = a1 * wv.y + bv.y, a2 = a2 * wv.z + bv.z, a3 = a3 * wv.w + bv.w;
    }
    store4<TY>(yr + 4 * i, a0, a1, a2, a3);
  }
}

// A row's two means for dx, by its warp: of g = dy w (dy without w) and of
// g xhat, each lane's columns in index order in double, then warp_sum.
template <class T>
__device__ __forceinline__ void dx_means(const T* xr, const float* dyr, const float* w, float m, float s, int64_t C,
                                         int lane, float& gmean, float& gxmean) {
  double gsum = 0, gxsum = 0;
  for (int64_t c = lane; c < C; c += 32) {
    const float xh = (to_float(xr[c]) - m) * s;
    const float g = w ? dyr[c] * w[c] : dyr[c];
    gsum += g;
    gxsum += g * xh;
  }
  gmean = static_cast<float>(warp_sum(gsum) / C);
  gxmean = static_cast<float>(warp_sum(gxsum) / C);
}

// dx's term of one element: rstd (g - mean g - xhat mean(g xhat)).
__device__ __forceinline__ float dx_term(float g, float xh, float s, float gmean, float gxmean) {
  return s * (g - gmean - xh * gxmean);
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
  float gmean, gxmean;
  dx_means(xr, dyr, w, m, s, C, lane, gmean, gxmean);
  float* dxr = dx + n * C;
  for (int64_t c = lane; c < C; c += 32) {
    const float xh = (to_float(xr[c]) - m) * s;
    dxr[c] += dx_term(w ? __fmul_rn(dyr[c], w[c]) : dyr[c], xh, s, gmean, gxmean);
  }
}

constexpr int64_t kLnChunk = 64;   // rows a fused block (a partial of dw, db)
constexpr int kLnMaxCols = 2048;  // the fused kernel's widest row: 64 columns a lane

// Rows [blockIdx.x * kLnChunk, + kLnChunk): warp w takes rows w, w + kWarps,
// ...; dx exactly as layernorm_dx_kernel (dx_means, dx_term); lane l
// adds dy*xhat and dy of its columns l + 32 k (k < K, K * 32 >= C) into
// registers; at the end the warps' sums go into shared memory in warp order
// and the block writes them as its chunk's partial, (2, chunks, C).
template <class T, int K>
static __global__ void __launch_bounds__(kBlock)
    layernorm_backward_chunk(float* dx, float* partial, const float* dy, const T* x, const float* w,
                             const float* mean, const float* rstd, int64_t N, int64_t C, int64_t chunks) {
  extern __shared__ float sums[];  // [2][C]: dw's terms, db's
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float aw[K], ab[K];
#pragma unroll
  for (int k = 0; k < K; ++k) aw[k] = ab[k] = 0.f;
  const int64_t r0 = blockIdx.x * kLnChunk, r1 = min(N, r0 + kLnChunk);
  for (int64_t n = r0 + warp; n < r1; n += kWarps) {
    const T* xr = x + n * C;
    const float* dyr = dy + n * C;
    const float m = mean[n], s = rstd[n];
    float gmean, gxmean;
    dx_means(xr, dyr, w, m, s, C, lane, gmean, gxmean);
    float* dxr = dx + n * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = lane + 32 * k;
      if (c >= C) break;
      const float xh = (to_float(xr[c]) - m) * s;
      const float d = dyr[c];
      dxr[c] += dx_term(__fmul_rn(d, w[c]), xh, s, gmean, gxmean);  // (g rounded in both kernels: no FMA into g - gmean in one alone)
      aw[k] += d * xh;
      ab[k] += d;
    }
  }
  for (int q = 0; q < kWarps; ++q) {  // the warps' sums, in warp order
    if (warp == q) {
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int64_t c = lane + 32 * k;
        if (c >= C) break;
        sums[c] = q == 0 ? aw[k] : sums[c] + aw[k];
        sums[C + c] = q == 0 ? ab[k] : sums[C + c] + ab[k];
      }
    }
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    partial[blockIdx.x * C + c] = sums[c];
    partial[(chunks + blockIdx.x) * C + c] = sums[C + c];
  }
}

namespace {
// The fused backward for rows of up to K * 32 values.
template <int K>
void backward_chunks(Ctx& ctx, const LayerNormBackwardArgs& a, int64_t N, int64_t C) {
  const int64_t chunks = (N + kLnChunk - 1) / kLnChunk;
  Tensor partial = Tensor::empty({2 * chunks * C}, DType::f32, ctx);
  const size_t smem = sizeof(float) * 2 * static_cast<size_t>(C);  // (16 KiB at most: no opt-in)
  layernorm_backward_chunk<float, K><<<static_cast<unsigned>(chunks), kBlock, smem, stream(ctx)>>>(
      a.dx.data<float>(), partial.data<float>(), a.dy.data<float>(), a.x.data<float>(), a.w.data<float>(),
      a.mean.data<float>(), a.rstd.data<float>(), N, C, chunks);
  CUDA_CHECK(cudaGetLastError());
  const dim3 fgrid(static_cast<unsigned>((C + 31) / 32), 2);
  column_sum_finish<<<fgrid, 32 * kFinishParts, 0, stream(ctx)>>>(partial.data<float>(), chunks, C,
                                                                  ColumnOut{{a.dw->data<float>(), a.db->data<float>()}});
  CUDA_CHECK(cudaGetLastError());
}
}  // namespace

namespace {
template <int NV, int L = 32>
void forward_regs(Ctx& ctx, const LayerNormArgs& a, const float* w, const float* b, bool bf, int64_t N, int64_t C) {
  const unsigned grid = grid_for(N, kBlock / L);
  if (bf)  // y rounded as it is written (a bf16 GEMM's input)
    layernorm_forward_regs<__nv_bfloat16, NV, L><<<grid, kBlock, 0, stream(ctx)>>>(
        elems<Bf16>(a.y), a.mean.data<float>(), a.rstd.data<float>(), a.x.data<float>(), w, b, N, C);
  else
    layernorm_forward_regs<float, NV, L><<<grid, kBlock, 0, stream(ctx)>>>(
        a.y.data<float>(), a.mean.data<float>(), a.rstd.data<float>(), a.x.data<float>(), w, b, N, C);
  CUDA_CHECK(cudaGetLastError());
}
}  // namespace

void layernorm_forward(Ctx& ctx, const LayerNormArgs& a) {
  const int64_t N = a.x.dim(0), C = a.x.dim(1);
  if (N == 0) return;
  const bool affine = a.w.defined();
  const float *w = affine ? a.w.data<float>() : nullptr, *b = affine ? a.b.data<float>() : nullptr;
  const bool bf = a.y.dtype() == DType::bf16;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (C % 4 == 0 && C <= kLnRegCols && aligned(a.x.raw()) && aligned(a.y.raw()) && (!affine || (aligned(w) && aligned(b)))) {
    const int64_t per_lane = (C / 4 + 31) / 32;  // 16-byte vectors a lane
    if (C <= 16) return forward_regs<1, 4>(ctx, a, w, b, bf, N, C);  // (rows of 4 to 16 lanes: 32 / L rows a warp)
    if (C <= 32) return forward_regs<1, 8>(ctx, a, w, b, bf, N, C);
    if (C <= 64) return forward_regs<1, 16>(ctx, a, w, b, bf, N, C);
    if (per_lane <= 1) return forward_regs<1>(ctx, a, w, b, bf, N, C);
    if (per_lane <= 2) return forward_regs<2>(ctx, a, w, b, bf, N, C);
    if (per_lane <= 4) return forward_regs<4>(ctx, a, w, b, bf, N, C);
    if (per_lane <= 8) return forward_regs<8>(ctx, a, w, b, bf, N, C);
    return forward_regs<kLnRegCols / 128>(ctx, a, w, b, bf, N, C);
  }
  if (bf)  // y rounded as it is written (a bf16 GEMM's input)
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
  if (affine && N > kLnChunk && C > 0 && C <= kLnMaxCols) {  // (one chunk: column_sums' serial sum, the CPU's order)
    if (C <= 8 * 32) return backward_chunks<8>(ctx, a, N, C);
    if (C <= 16 * 32) return backward_chunks<16>(ctx, a, N, C);
    if (C <= 32 * 32) return backward_chunks<32>(ctx, a, N, C);
    return backward_chunks<kLnMaxCols / 32>(ctx, a, N, C);
  }
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
