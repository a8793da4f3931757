// Softmax cross-entropy on CUDA (ops/cross_entropy.h): the logits moved three
// times in all, read once by each pass and dlogits written once.
//
// forward:  one block per row, each thread an online softmax over its
//           elements (ops/cuda/online_softmax.h; 16-byte loads, a row's
//           unaligned head and tail one element a thread); the row's max M, then Z = sum_t s_t e^(m_t - M) in double
//           by a fixed tree; stats = (M, 1 / Z), and the row's loss
//           log Z - (l_y - M) in double. The mean over rows is a fixed-order
//           two-stage sum (common.cuh) read back once: the one synchronisation
//           of the step's loss.
// backward: one block per row: dlogits = k p - k [v == y], p = e^(l - M) (1/Z)
//           recomputed, k = scale / N.
// No atomics: two runs are bitwise equal. A target outside [0, V) (the
// kernel cannot throw) makes its row's loss NaN and adds no one-hot term.
#include "ops/cross_entropy.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/online_softmax.h"

#include <cstdint>
#include <initializer_list>

namespace sy::ops::cuda {

namespace {

// Threads a row: a power of two (block_sum's tree), 32 to kBlock, about one
// 16-byte vector of the row each.
int row_threads(int64_t V) {
  int t = 32;
  while (t < kBlock && 4 * static_cast<int64_t>(t) < V) t *= 2;
  return t;
}

__global__ void cross_entropy_forward_kernel(float* stats, double* row_loss, const float* logits,
                                             const int32_t* targets, int64_t V, bool vec4) {
  __shared__ float fscratch[kBlock];
  __shared__ double dscratch[kBlock];
  const int64_t n = blockIdx.x;
  const float* l = logits + n * V;
  OnlineSoftmax o;
  if (vec4) {
    const RowSplit r = split_row(n, V);
    const int64_t t = threadIdx.x;
    if (t < r.head) o.add(l[t]);
    if (t < r.tail) o.add(l[r.head + 4 * r.body + t]);
    const float4* l4 = reinterpret_cast<const float4*>(l + r.head);
    for (int64_t i = t; i < r.body; i += blockDim.x) {
      const float4 x = l4[i];
      o.add(x.x), o.add(x.y), o.add(x.z), o.add(x.w);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) o.add(l[v]);
  }
  const float M = block_max(o.m, fscratch);
  // (A row of -inf has Z = 0 and a NaN loss, as on the CPU.)
  const double Z = block_sum(o.share(M), dscratch);
  if (threadIdx.x == 0) {
    const int32_t y = targets[n];
    stats[2 * n] = M;
    stats[2 * n + 1] = static_cast<float>(1.0 / Z);
    row_loss[n] = y >= 0 && y < V ? log(Z) - (static_cast<double>(l[y]) - M) : NAN;
  }
}

__global__ void cross_entropy_backward_kernel(float* dlogits, const float* logits, const float* stats,
                                              const int32_t* targets, int64_t V, float k, bool vec4) {
  const int64_t n = blockIdx.x;
  const float* l = logits + n * V;
  float* d = dlogits + n * V;
  const float M = stats[2 * n], inv = stats[2 * n + 1];
  const int32_t y = targets[n];
  // k p without an FMA into the subtraction: the CPU's rounding of k p - k.
  auto grad = [&](float x, int64_t v) {
    const float g = __fmul_rn(k, __fmul_rn(expf(x - M), inv));
    return v == y ? g - k : g;
  };
  if (vec4) {  // (logits and dlogits rows share their split: both arrays 16-byte aligned)
    const RowSplit r = split_row(n, V);
    const int64_t t = threadIdx.x;
    if (t < r.head) d[t] = grad(l[t], t);
    if (t < r.tail) {
      const int64_t v = r.head + 4 * r.body + t;
      d[v] = grad(l[v], v);
    }
    const float4* l4 = reinterpret_cast<const float4*>(l + r.head);
    float4* d4 = reinterpret_cast<float4*>(d + r.head);
    for (int64_t i = t; i < r.body; i += blockDim.x) {
      const float4 x = l4[i];
      const int64_t v = r.head + 4 * i;
      d4[i] = make_float4(grad(x.x, v), grad(x.y, v + 1), grad(x.z, v + 2), grad(x.w, v + 3));
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) d[v] = grad(l[v], v);
  }
}

}  // namespace

float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a) {
  const int64_t N = a.logits.dim(0), V = a.logits.dim(1);
  if (N == 0) return 0.f;  // the CPU's 0/0 aside, nothing to average
  Tensor row_loss = Tensor::empty({N}, DType::f64, ctx);
  const float* logits = a.logits.data<float>();
  cross_entropy_forward_kernel<<<static_cast<unsigned>(N), row_threads(V), 0, stream(ctx)>>>(
      a.stats.data<float>(), row_loss.data<double>(), logits, a.targets.data<int32_t>(), V,
      aligned16({logits}));
  CUDA_CHECK(cudaGetLastError());
  return static_cast<float>(sum_f64_to_host(ctx, row_loss.data<double>(), N) / N);
}

void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a) {
  const int64_t N = a.logits.dim(0), V = a.logits.dim(1);
  if (N == 0) return;
  const float k = a.scale / static_cast<float>(N);
  const float* logits = a.logits.data<float>();
  float* d = a.dlogits.data<float>();
  cross_entropy_backward_kernel<<<static_cast<unsigned>(N), row_threads(V), 0, stream(ctx)>>>(
      d, logits, a.stats.data<float>(), a.targets.data<int32_t>(), V, k, aligned16({logits, d}));
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace sy::ops::cuda
