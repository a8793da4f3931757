// Head layout changes on CUDA: one thread per element of the (H, N, D) side,
// pure copies (bitwise the CPU's).
//
//   split_heads:  out[h, n, d] = in[n, col0 + h*D + d]
//   merge_heads:  out[n, col0 + h*D + d] = in[h, n, d]
//
// Grouped-query attention's key/value heads (ops/heads.h): one thread per
// output element; expand a copy, reduce a sum over the group's query heads
// in h's order in f32 (bitwise the CPU's, which adds in that order too).
#include "ops/cuda/common.cuh"
#include "ops/heads.h"

namespace sy::ops::cuda {

namespace {
struct HeadShape {
  int64_t H, N, D, W, col0;
  // Position in the packed (N, W) rows of element t of the (H, N, D) side.
  __device__ int64_t packed(int64_t t) const {
    const int64_t d = t % D, n = (t / D) % N, h = t / (D * N);
    return n * W + col0 + h * D + d;
  }
  __host__ __device__ int64_t total() const { return H * N * D; }
};
}  // namespace

static __global__ void split_kernel(float* out, const float* in, HeadShape s) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < s.total();
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = in[s.packed(t)];
}

static __global__ void merge_kernel(float* out, const float* in, HeadShape s) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < s.total();
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[s.packed(t)] = in[t];
}

namespace {
struct KvShape {
  int64_t N, H, G, D;
  __host__ __device__ int64_t C() const { return H * D; }
  __host__ __device__ int64_t wide() const { return 3 * H * D; }
  __host__ __device__ int64_t grouped() const { return (H + 2 * G) * D; }
};

__device__ inline float widen(float x) { return x; }
__device__ inline float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ inline T narrow(float x);
template <>
__device__ inline float narrow<float>(float x) { return x; }
template <>
__device__ inline __nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// out (N, 3HD)[t] = in (N, (H+2G)D) at the column its head shares.
template <class T>
__global__ void expand_kv_kernel(T* out, const T* in, KvShape s) {
  const int64_t total = s.N * s.wide(), C = s.C(), r = s.H / s.G;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / s.wide(), c = t % s.wide();
    int64_t from = c;
    if (c >= C) {
      const int64_t part = c < 2 * C ? 0 : 1, within = c - C - part * C;
      from = C + part * s.G * s.D + (within / s.D / r) * s.D + within % s.D;
    }
    out[t] = in[n * s.grouped() + from];
  }
}

// out (N, (H+2G)D)[t] = the sum over its group's query heads of in (N, 3HD).
template <class T>
__global__ void reduce_kv_kernel(T* out, const T* in, KvShape s) {
  const int64_t total = s.N * s.grouped(), C = s.C(), KV = s.G * s.D, r = s.H / s.G;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / s.grouped(), c = t % s.grouped();
    const T* row = in + n * s.wide();
    if (c < C) {
      out[t] = row[c];
      continue;
    }
    const int64_t part = c < C + KV ? 0 : 1, within = c - C - part * KV, j = within / s.D, d = within % s.D;
    float sum = 0.f;
    for (int64_t h = j * r; h < (j + 1) * r; ++h) sum += widen(row[C + part * C + h * s.D + d]);
    out[t] = narrow<T>(sum);
  }
}

// Runs kernel<float> or kernel<bf16> (by out's dtype) over `total` elements.
using KvF32 = void (*)(float*, const float*, KvShape);
using KvBf16 = void (*)(__nv_bfloat16*, const __nv_bfloat16*, KvShape);
void launch_kv(Ctx& ctx, KvF32 f32, KvBf16 bf16, int64_t total, Tensor& out, const Tensor& in, const KvShape& s) {
  if (total == 0) return;
  if (out.dtype() == DType::bf16)
    bf16<<<grid_stride(total), kBlock, 0, stream(ctx)>>>(static_cast<__nv_bfloat16*>(out.raw()),
                                                          static_cast<const __nv_bfloat16*>(in.raw()), s);
  else
    f32<<<grid_stride(total), kBlock, 0, stream(ctx)>>>(out.data<float>(), in.data<float>(), s);
  CUDA_CHECK(cudaGetLastError());
}
}  // namespace

void expand_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& a) {
  const KvShape s{out.dim(0), a.heads, a.kv_heads, a.head_dim};
  launch_kv(ctx, expand_kv_kernel<float>, expand_kv_kernel<__nv_bfloat16>, s.N * s.wide(), out, in, s);
}

void reduce_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& a) {
  const KvShape s{out.dim(0), a.heads, a.kv_heads, a.head_dim};
  launch_kv(ctx, reduce_kv_kernel<float>, reduce_kv_kernel<__nv_bfloat16>, s.N * s.grouped(), out, in, s);
}

void split_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0) {
  const HeadShape s{out.dim(0), out.dim(1), out.dim(2), in.dim(1), col0};
  if (s.total() == 0) return;
  split_kernel<<<grid_stride(s.total()), kBlock, 0, stream(ctx)>>>(
      out.data<float>(), in.data<float>(), s);
  CUDA_CHECK(cudaGetLastError());
}

void merge_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0) {
  const HeadShape s{in.dim(0), in.dim(1), in.dim(2), out.dim(1), col0};
  if (s.total() == 0) return;
  merge_kernel<<<grid_stride(s.total()), kBlock, 0, stream(ctx)>>>(
      out.data<float>(), in.data<float>(), s);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace sy::ops::cuda
