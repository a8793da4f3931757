// SwiGLU on CUDA: the element arithmetic of ops/cuda/swiglu_rows.h (tested on
// the host against the CPU reference). A thread takes packs of 4 adjacent
// columns j of one row (16-byte loads of the gate and up halves, of dy and
// of an fp32 dx; 8-byte stores of a bf16 output) where H % 4 == 0 and every
// pointer is aligned to its pack, else one element a thread (the index
// functions of swiglu_rows.h). The same arithmetic per element either way,
// so the same bits. Elementwise, one owner per output: deterministic. (One
// element a thread made two 64-bit divisions and 4-byte loads per element,
// the same shape that kept GELU at a third of the copy rate: ops/cuda/gelu.cu.)
#include "ops/cuda/common.cuh"
#include "ops/cuda/swiglu_rows.h"
#include "ops/swiglu.h"

#include <type_traits>

namespace sy::ops::cuda {

namespace {
constexpr int kV = 4;  // columns a pack

// An output's packs: 16 bytes of fp32, 8 of bf16 (an expert's block of a
// packed bf16 act starts at a multiple of 4 values, not always of 8).
bool pack_aligned(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()) % (kV * dtype_size(t.dtype())) == 0; }

// The bf16 outputs of the index functions: the fp32 values rounded as they
// are written (a bf16 y feeds a bf16 GEMM; a bf16 dx is written, not added to).
struct ForwardRounded {
  __nv_bfloat16* y;
  swiglu_rows::Forward f;
  __device__ void operator()(int64_t i) const { y[i] = __float2bfloat16_rn(f.value(i)); }
};

struct BackwardRounded {
  __nv_bfloat16* dx;
  swiglu_rows::Backward f;
  __device__ void operator()(int64_t i) const {
    int64_t gi;
    float dg, du;
    f.grads(i, gi, dg, du);
    dx[gi] = __float2bfloat16_rn(dg);
    dx[gi + f.H] = __float2bfloat16_rn(du);
  }
};
}  // namespace

// Pack p: row n = p / (H / 4), columns j0 .. j0 + 3 with j0 = 4 (p % (H / 4)).
template <class TY>
static __global__ void swiglu_forward_packs(TY* y, const float* x, int64_t H, int64_t packs) {
  const int64_t per_row = H / kV;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = p / per_row, j0 = (p % per_row) * kV;
    const Pack<float, kV> g = *reinterpret_cast<const Pack<float, kV>*>(x + n * 2 * H + j0);
    const Pack<float, kV> u = *reinterpret_cast<const Pack<float, kV>*>(x + n * 2 * H + H + j0);
    Pack<TY, kV> o;
#pragma unroll
    for (int k = 0; k < kV; ++k) o.v[k] = from_float<TY>(swiglu_rows::value_of(g.v[k], u.v[k]));
    *reinterpret_cast<Pack<TY, kV>*>(y + n * H + j0) = o;
  }
}

// TD float: dx accumulates; bf16: dx is written, rounded.
template <class TD>
static __global__ void swiglu_backward_packs(TD* dx, const float* dy, const float* x, int64_t H, int64_t packs) {
  const int64_t per_row = H / kV;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = p / per_row, j0 = (p % per_row) * kV, gi = n * 2 * H + j0;
    const Pack<float, kV> d = *reinterpret_cast<const Pack<float, kV>*>(dy + n * H + j0);
    const Pack<float, kV> g = *reinterpret_cast<const Pack<float, kV>*>(x + gi);
    const Pack<float, kV> u = *reinterpret_cast<const Pack<float, kV>*>(x + gi + H);
    Pack<TD, kV> dg, du;
    if constexpr (std::is_same_v<TD, float>) {
      dg = *reinterpret_cast<const Pack<float, kV>*>(dx + gi);
      du = *reinterpret_cast<const Pack<float, kV>*>(dx + gi + H);
    }
#pragma unroll
    for (int k = 0; k < kV; ++k) {
      float a, b;
      swiglu_rows::grads_of(d.v[k], g.v[k], u.v[k], a, b);
      if constexpr (std::is_same_v<TD, float>)
        dg.v[k] += a, du.v[k] += b;
      else
        dg.v[k] = from_float<TD>(a), du.v[k] = from_float<TD>(b);
    }
    *reinterpret_cast<Pack<TD, kV>*>(dx + gi) = dg;
    *reinterpret_cast<Pack<TD, kV>*>(dx + gi + H) = du;
  }
}

void swiglu_forward(Ctx& ctx, const SwigluArgs& a) {
  const int64_t N = a.x.dim(0), H = a.y.dim(1);
  if (N * H == 0) return;
  const float* x = a.x.data<float>();
  const bool bf16 = a.y.dtype() == DType::bf16;
  if (H % kV == 0 && aligned16(x) && pack_aligned(a.y)) {
    const int64_t packs = N * H / kV;
    if (bf16)
      swiglu_forward_packs<__nv_bfloat16><<<grid_stride(packs), kBlock, 0, stream(ctx)>>>(elems<Bf16>(a.y), x, H, packs);
    else
      swiglu_forward_packs<float><<<grid_stride(packs), kBlock, 0, stream(ctx)>>>(a.y.data<float>(), x, H, packs);
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (bf16)
    Launch{stream(ctx)}(N * H, ForwardRounded{elems<Bf16>(a.y), {nullptr, x, H}});
  else
    Launch{stream(ctx)}(N * H, swiglu_rows::Forward{a.y.data<float>(), x, H});
}

void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a) {
  const int64_t N = a.x.dim(0), H = a.dy.dim(1);
  if (N * H == 0) return;
  const float *x = a.x.data<float>(), *dy = a.dy.data<float>();
  const bool bf16 = a.dx.dtype() == DType::bf16;
  if (H % kV == 0 && aligned16(x) && aligned16(dy) && pack_aligned(a.dx)) {
    const int64_t packs = N * H / kV;
    if (bf16)
      swiglu_backward_packs<__nv_bfloat16>
          <<<grid_stride(packs), kBlock, 0, stream(ctx)>>>(elems<Bf16>(a.dx), dy, x, H, packs);
    else
      swiglu_backward_packs<float><<<grid_stride(packs), kBlock, 0, stream(ctx)>>>(a.dx.data<float>(), dy, x, H, packs);
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (bf16)
    Launch{stream(ctx)}(N * H, BackwardRounded{elems<Bf16>(a.dx), {nullptr, dy, x, H}});
  else
    Launch{stream(ctx)}(N * H, swiglu_rows::Backward{a.dx.data<float>(), dy, x, H});
}

}  // namespace sy::ops::cuda
