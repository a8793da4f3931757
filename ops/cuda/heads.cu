// Head layout changes on CUDA: one thread per element of the (H, N, D) side,
// pure copies (bitwise the CPU's).
//
//   split_heads:  out[h, n, d] = in[n, col0 + h*D + d]
//   merge_heads:  out[n, col0 + h*D + d] = in[h, n, d]
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
