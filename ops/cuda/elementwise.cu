// Elementwise ops on CUDA: one thread per element (grid-stride), float4
// loads and stores where every tensor is 16-byte aligned and the length a
// multiple of 4. No reductions: each output element depends on its inputs only.
//
//   add_into: y += x    mul_into: y *= x    scale: y *= s    sigmoid: y = 1 / (1 + exp(-x))
//   to_bf16: y = bf16(x), __float2bfloat16_rn (round to nearest even, as the CPU's f32_to_bf16)
//   to_f32:  y = float(x), exact
#include <cuda_bf16.h>

#include "ops/cuda/common.cuh"
#include "ops/elementwise.h"

namespace sy::ops::cuda {

namespace {

struct Add {
  __device__ float operator()(float y, float x) const { return y + x; }
};
struct Mul {
  __device__ float operator()(float y, float x) const { return y * x; }
};
struct Scale {
  float s;
  __device__ float operator()(float y, float) const { return y * s; }
};
struct Sigmoid {
  __device__ float operator()(float, float x) const { return 1.f / (1.f + expf(-x)); }
};

}  // namespace

// y[i] = f(y[i], x[i]) over n elements; x may be null (scale).
template <class F>
static __global__ void binary_op(float* y, const float* x, int64_t n, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = f(y[i], x ? x[i] : 0.f);
}

template <class F>
static __global__ void binary_op4(float4* y, const float4* x, int64_t n4, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float4 a = y[i];
    const float4 b = x ? x[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    a.x = f(a.x, b.x), a.y = f(a.y, b.y), a.z = f(a.z, b.z), a.w = f(a.w, b.w);
    y[i] = a;
  }
}

namespace {

template <class F>
void launch(Ctx& ctx, float* y, const float* x, int64_t n, F f) {
  if (n == 0) return;
  if (n % 4 == 0 && aligned16(y) && (!x || aligned16(x))) {
    const int64_t n4 = n / 4;
    binary_op4<<<grid_stride(n4), kBlock, 0, stream(ctx)>>>(
        reinterpret_cast<float4*>(y), reinterpret_cast<const float4*>(x), n4, f);
  } else {
    binary_op<<<grid_stride(n), kBlock, 0, stream(ctx)>>>(y, x, n, f);
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void add_into(Ctx& ctx, Tensor& y, const Tensor& x) { launch(ctx, y.data<float>(), x.data<float>(), y.numel(), Add{}); }

void mul_into(Ctx& ctx, Tensor& y, const Tensor& x) { launch(ctx, y.data<float>(), x.data<float>(), y.numel(), Mul{}); }

void scale(Ctx& ctx, Tensor& y, float s) { launch(ctx, y.data<float>(), nullptr, y.numel(), Scale{s}); }

void sigmoid(Ctx& ctx, Tensor& y, const Tensor& x) {
  launch(ctx, y.data<float>(), x.data<float>(), y.numel(), Sigmoid{});
}

// Dtype conversion, one element per step of a grid-stride loop: to_bf16 rounds
// to nearest even (as the CPU's f32_to_bf16), to_f32 is exact.
__device__ inline void convert(__nv_bfloat16& y, float x) { y = __float2bfloat16_rn(x); }
__device__ inline void convert(float& y, __nv_bfloat16 x) { y = __bfloat162float(x); }

template <class To, class From>
__global__ void convert_kernel(To* y, const From* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    convert(y[i], x[i]);
}

template <class To, class From>
void convert_all(Ctx& ctx, To* y, const From* x, int64_t n) {
  if (n == 0) return;
  convert_kernel<<<grid_stride(n), kBlock, 0, stream(ctx)>>>(y, x, n);
  CUDA_CHECK(cudaGetLastError());
}

void to_bf16(Ctx& ctx, Tensor& y, const Tensor& x) {
  convert_all(ctx, static_cast<__nv_bfloat16*>(y.raw()), x.data<float>(), y.numel());
}

void to_f32(Ctx& ctx, Tensor& y, const Tensor& x) {
  convert_all(ctx, y.data<float>(), static_cast<const __nv_bfloat16*>(x.raw()), y.numel());
}

}  // namespace sy::ops::cuda
