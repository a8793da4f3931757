// GELU (tanh form) on CUDA: the CPU's formula in fp32 with CUDA's tanhf
// (within an ulp or two of libm: class F), element by element, so
// deterministic. y fp32, or bf16 (the fp32 value rounded as it is stored: a
// bf16 GEMM's input); x and dy fp32 or bf16 (a bf16 GEMM's output), widened.
// A thread takes packs of 8 elements (16-byte loads and stores; two for
// fp32) where every pointer is 16-byte aligned, the last n % 8 elements one
// a thread: the same arithmetic per element, so the same bits as one
// element a thread. (One 2-byte load a thread kept too few bytes in flight:
// the padded MoE layer's GELU over 40960 x 4096 bf16 values took 0.52 ms
// forward and 0.57 backward on an H200, about 3x its traffic at the copy
// rate.)
//
//   forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//   backward: dx += dy * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3*0.044715 x^2))
//             (a bf16 dx: dx = bf16(dy * ...), written)
#include "ops/cuda/common.cuh"
#include "ops/gelu.h"

#include <cstdint>
#include <initializer_list>
#include <type_traits>

namespace sy::ops::cuda {

namespace {
constexpr float kS2Pi = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kC = 0.044715f;
}  // namespace

__device__ __forceinline__ float gelu_of(float v) { return 0.5f * v * (1.f + tanhf(kS2Pi * (v + kC * v * v * v))); }

__device__ __forceinline__ float gelu_grad(float v) {
  const float t = tanhf(kS2Pi * (v + kC * v * v * v));
  return 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kS2Pi * (1.f + 3.f * kC * v * v);
}

// Elements [0, packs * V): pack p is elements p V .. p V + V - 1.
template <class T, class TY, int V>
static __global__ void gelu_forward_kernel(TY* y, const T* x, int64_t packs) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Pack<T, V> a = reinterpret_cast<const Pack<T, V>*>(x)[p];
    Pack<TY, V> b;
#pragma unroll
    for (int j = 0; j < V; ++j) b.v[j] = from_float<TY>(gelu_of(to_float(a.v[j])));
    reinterpret_cast<Pack<TY, V>*>(y)[p] = b;
  }
}

// TD float: dx accumulates; bf16: dx is written, rounded. TX, TY: x and dy,
// f32 or bf16 (widened).
template <class TD, class TX, class TY, int V>
static __global__ void gelu_backward_kernel(TD* dx, const TY* dy, const TX* x, int64_t packs) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Pack<TX, V> a = reinterpret_cast<const Pack<TX, V>*>(x)[p];
    const Pack<TY, V> g = reinterpret_cast<const Pack<TY, V>*>(dy)[p];
    Pack<TD, V> d;
    if constexpr (std::is_same_v<TD, float>) d = reinterpret_cast<const Pack<TD, V>*>(dx)[p];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float dd = to_float(g.v[j]) * gelu_grad(to_float(a.v[j]));
      if constexpr (std::is_same_v<TD, float>)
        d.v[j] += dd;
      else
        d.v[j] = from_float<TD>(dd);
    }
    reinterpret_cast<Pack<TD, V>*>(dx)[p] = d;
  }
}

namespace {
constexpr int kPack = 8;

// f(V, first, count) for each part of n elements: packs of kPack where
// every pointer is 16-byte aligned, then the rest (or all) one a thread.
template <class F>
void by_packs(int64_t n, std::initializer_list<const void*> ptrs, F f) {
  const int64_t packed = aligned16(ptrs) ? n / kPack * kPack : 0;
  if (packed > 0) f(std::integral_constant<int, kPack>{}, int64_t{0}, packed);
  if (packed < n) f(std::integral_constant<int, 1>{}, packed, n - packed);
}

// The kernel for x's dtype (the other types fixed by the caller).
template <class TX, class TY>
void forward_typed(Ctx& ctx, TY* y, const TX* x, int64_t n) {
  by_packs(n, {y, x}, [&](auto V, int64_t at, int64_t count) {
    constexpr int kV = decltype(V)::value;
    const int64_t packs = count / kV;
    gelu_forward_kernel<TX, TY, kV><<<grid_stride(packs), kBlock, 0, stream(ctx)>>>(y + at, x + at, packs);
    CUDA_CHECK(cudaGetLastError());
  });
}
template <class TY>
void forward_for_x(Ctx& ctx, TY* y, const Tensor& x, int64_t n) {
  if (x.dtype() == DType::bf16)
    forward_typed(ctx, y, elems<Bf16>(x), n);
  else
    forward_typed(ctx, y, x.data<float>(), n);
}

template <class TD, class TX, class TY>
void backward_typed(Ctx& ctx, TD* dx, const TY* dy, const TX* x, int64_t n) {
  by_packs(n, {dx, dy, x}, [&](auto V, int64_t at, int64_t count) {
    constexpr int kV = decltype(V)::value;
    const int64_t packs = count / kV;
    gelu_backward_kernel<TD, TX, TY, kV><<<grid_stride(packs), kBlock, 0, stream(ctx)>>>(dx + at, dy + at, x + at,
                                                                                          packs);
    CUDA_CHECK(cudaGetLastError());
  });
}

template <class TD, class TY>
void backward_for_x(Ctx& ctx, TD* dx, const TY* dy, const Tensor& x, int64_t n) {
  if (x.dtype() == DType::bf16)
    backward_typed(ctx, dx, dy, elems<Bf16>(x), n);
  else
    backward_typed(ctx, dx, dy, x.data<float>(), n);
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
