// Softmax cross-entropy on CUDA.
//
// forward:  one block per row: the max (order-free), exp(l - max) stored as p,
//           their sum in double by a fixed tree, p /= sum, and the row's loss
//           -(l[y] - max - log sum) in double; the mean over rows is a
//           fixed-order two-stage sum (common.cuh) read back once: the one
//           synchronisation of the step's loss.
// backward: one thread per element, dlogits = k p - k [v == y], k = scale / N.
// No atomics: two runs are bitwise equal. Logits templated on their storage
// type (fp32 now); probabilities stay fp32.
#include "ops/cross_entropy.h"
#include "ops/cuda/common.cuh"

namespace sy::ops::cuda {

template <class T>
static __global__ void cross_entropy_forward_kernel(float* probs, double* row_loss, const T* logits,
                                                    const int32_t* targets, int64_t V) {
  __shared__ float fscratch[kBlock];
  __shared__ double dscratch[kBlock];
  const int64_t n = blockIdx.x;
  const T* l = logits + n * V;
  float* p = probs + n * V;
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, to_float(l[v]));
  mx = block_max(mx, fscratch);
  double sum = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float e = expf(to_float(l[v]) - mx);
    p[v] = e;
    sum += e;
  }
  sum = block_sum(sum, dscratch);
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) p[v] = static_cast<float>(p[v] / sum);
  if (threadIdx.x == 0) row_loss[n] = -(static_cast<double>(to_float(l[targets[n]]) - mx) - log(sum));
}

static __global__ void cross_entropy_backward_kernel(float* dlogits, const float* probs, const int32_t* targets,
                                                     int64_t N, int64_t V, float k) {
  const int64_t total = N * V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float d = __fmul_rn(k, probs[i]);  // no FMA with the subtraction: the CPU's rounding
    dlogits[i] = (i % V == targets[i / V]) ? d - k : d;
  }
}

float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a) {
  const int64_t N = a.logits.dim(0), V = a.logits.dim(1);
  if (N == 0) return 0.f;  // the CPU's 0/0 aside, nothing to average
  Tensor row_loss = Tensor::empty({N}, DType::f64, ctx);
  cross_entropy_forward_kernel<float><<<static_cast<unsigned>(N), kBlock, 0, stream(ctx)>>>(
      a.probs.data<float>(), row_loss.data<double>(), a.logits.data<float>(), a.targets.data<int32_t>(), V);
  CUDA_CHECK(cudaGetLastError());
  return static_cast<float>(sum_f64_to_host(ctx, row_loss.data<double>(), N) / N);
}

void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a) {
  const int64_t N = a.probs.dim(0), V = a.probs.dim(1);
  if (N == 0) return;
  const float k = a.scale / static_cast<float>(N);
  cross_entropy_backward_kernel<<<grid_stride(N * V), kBlock, 0, stream(ctx)>>>(
      a.dlogits.data<float>(), a.probs.data<float>(), a.targets.data<int32_t>(), N, V, k);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace sy::ops::cuda
