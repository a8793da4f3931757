// count_nonfinite on CUDA: a 0/1 flag per element (f64), summed by the fixed
// tree of sum_f64_to_host (common.cuh; exact: counts below 2^53). Only the
// trainer's diagnosis of a non-finite step calls it, so the 8 bytes per
// element of scratch are not worth a dedicated integer reduction.
#include "ops/cuda/common.cuh"
#include "ops/finite.h"

namespace sy::ops::cuda {

namespace {
struct NonfiniteFlag {
  const float* x;
  double* flag;
  __device__ void operator()(int64_t i) const { flag[i] = isfinite(x[i]) ? 0.0 : 1.0; }
};
}  // namespace

int64_t count_nonfinite(Ctx& ctx, const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return 0;
  Tensor flag = Tensor::empty({n}, DType::f64, ctx);
  Launch{stream(ctx)}(n, NonfiniteFlag{x.data<float>(), flag.data<double>()});
  return static_cast<int64_t>(sum_f64_to_host(ctx, flag.data<double>(), n));
}

}  // namespace sy::ops::cuda
