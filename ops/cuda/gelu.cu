// GELU (tanh form) on CUDA: one thread per element, the CPU's formula in fp32
// with CUDA's tanhf (within an ulp or two of libm: class F). Elementwise, so
// deterministic. y fp32, or bf16 (the fp32 value rounded as it is stored: a
// bf16 GEMM's input); x and dy fp32 or bf16 (a bf16 GEMM's output), widened.
//
//   forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dx += dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2))
//             (a bf16 dx: dx = bf16(dy * ...), written)
#include "ops/cuda/common.cuh"
#include "ops/gelu.h"

namespace sy::ops::cuda {

namespace {
constexpr float kS2Pi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kC = 0.044715f;
}  // namespace

template <class T, class TY>
static __global__ void gelu_forward_kernel(TY* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_float(x[i]);
    y[i] = from_float<TY>(0.5f * v * (1.f + tanhf(kS2Pi * (v + kC * v * v * v))));
  }
}

// TD float: dx accumulates; bf16: dx is written, rounded. TX, TY: x and dy,
// f32 or bf16 (widened).
template <class TD, class TX, class TY>
static __global__ void gelu_backward_kernel(TD* dx, const TY* dy, const TX* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_float(x[i]), g = to_float(dy[i]);
    const float t = tanhf(kS2Pi * (v + kC * v * v * v));
    const float dd = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kS2Pi * (1.f + 3.f * kC * v * v);
    if constexpr (std::is_same_v<TD, float>)
      dx[i] += g * dd;
    else
      dx[i] = from_float<TD>(g * dd);
  }
}

namespace {
// The kernel for x's dtype (the other types fixed by the caller).
template <class TY>
void forward_for_x(Ctx& ctx, TY* y, const Tensor& x, int64_t n) {
  if (x.dtype() == DType::bf16)
    gelu_forward_kernel<__nv_bfloat16, TY><<<grid_stride(n), kBlock, 0, stream(ctx)>>>(y, elems<Bf16>(x), n);
  else
    gelu_forward_kernel<float, TY><<<grid_stride(n), kBlock, 0, stream(ctx)>>>(y, x.data<float>(), n);
  CUDA_CHECK(cudaGetLastError());
}

template <class TD, class TY>
void backward_for_x(Ctx& ctx, TD* dx, const TY* dy, const Tensor& x, int64_t n) {
  if (x.dtype() == DType::bf16)
    gelu_backward_kernel<TD, __nv_bfloat16, TY><<<grid_stride(n), kBlock, 0, stream(ctx)>>>(dx, dy, elems<Bf16>(x), n);
  else
    gelu_backward_kernel<TD, float, TY><<<grid_stride(n), kBlock, 0, stream(ctx)>>>(dx, dy, x.data<float>(), n);
  CUDA_CHECK(cudaGetLastError());
}

template <class TD>
void backward_for_dy(Ctx& ctx, TD* dx, const Tensor& dy, const Tensor& x, int64_t n) {
  if (dy.dtype() == DType::bf16)
    backward_for_x<TD, __nv_bfloat16>(ctx, dx, elems<Bf16>(dy), x, n);
  else
    backward_for_x<TD, float>(ctx, dx, dy.data<float>(), x, n);
}
}  // namespace

void gelu_forward(Ctx& ctx, Tensor& y, const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return;
  if (y.dtype() == DType::bf16)  // y rounded as it is written (a bf16 GEMM's input)
    forward_for_x<__nv_bfloat16>(ctx, elems<Bf16>(y), x, n);
  else
    forward_for_x<float>(ctx, y.data<float>(), x, n);
}

void gelu_backward(Ctx& ctx, Tensor& dx, const Tensor& dy, const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return;
  if (dx.dtype() == DType::bf16)  // written, rounded (a bf16 GEMM's dy)
    backward_for_dy<__nv_bfloat16>(ctx, elems<Bf16>(dx), dy, x, n);
  else
    backward_for_dy<float>(ctx, dx.data<float>(), dy, x, n);
}

}  // namespace sy::ops::cuda
