// SwiGLU on CUDA: one thread per element of y, the functions of
// ops/cuda/swiglu_rows.h (tested on the host against the CPU reference) in a
// grid-stride loop. Elementwise, one owner per output: deterministic.
#include "ops/cuda/common.cuh"
#include "ops/cuda/swiglu_rows.h"
#include "ops/swiglu.h"

namespace sy::ops::cuda {

void swiglu_forward(Ctx& ctx, const SwigluArgs& a) {
  const int64_t N = a.x.dim(0), H = a.y.dim(1);
  Launch{stream(ctx)}(N * H, swiglu_rows::Forward{a.y.data<float>(), a.x.data<float>(), H});
}

void swiglu_backward(Ctx& ctx, const SwigluBackwardArgs& a) {
  const int64_t N = a.x.dim(0), H = a.dy.dim(1);
  Launch{stream(ctx)}(N * H, swiglu_rows::Backward{a.dx.data<float>(), a.dy.data<float>(), a.x.data<float>(), H});
}

}  // namespace sy::ops::cuda
