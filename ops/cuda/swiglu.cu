// SwiGLU on CUDA: one thread per element of y, the functions of
// ops/cuda/swiglu_rows.h (tested on the host against the CPU reference) in a
// grid-stride loop. Elementwise, one owner per output: deterministic.
#include "ops/cuda/common.cuh"
#include "ops/cuda/swiglu_rows.h"
#include "ops/swiglu.h"

namespace sy::ops::cuda {

namespace {
// The bf16 outputs: the fp32 values of the same functions, rounded as they
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

void swiglu_forward(Ctx& ctx, const SwigluArgs& a) {
  const int64_t N = a.x.dim(0), H = a.y.dim(1);
  if (a.y.dtype() == DType::bf16)
    Launch{stream(ctx)}(N * H, ForwardRounded{elems<Bf16>(a.y), {nullptr, a.x.data<float>(), H}});
  else
    Launch{stream(ctx)}(N * H, swiglu_rows::Forward{a.y.data<float>(), a.x.data<float>(), H});
}

void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a) {
  const int64_t N = a.x.dim(0), H = a.dy.dim(1);
  if (a.dx.dtype() == DType::bf16)
    Launch{stream(ctx)}(N * H, BackwardRounded{elems<Bf16>(a.dx), {nullptr, a.dy.data<float>(), a.x.data<float>(), H}});
  else
    Launch{stream(ctx)}(N * H, swiglu_rows::Backward{a.dx.data<float>(), a.dy.data<float>(), a.x.data<float>(), H});
}

}  // namespace sy::ops::cuda
