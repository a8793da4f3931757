// The depth router's gate on CUDA (ops/depth_gate.h): one thread per item,
// the CPU's expressions (products written with __fmul_rn/__fadd_rn where the
// CPU rounds them separately). predictor_loss writes dl elementwise and
// the BCE and the agreement per item into one f64 array, each half summed and
// divided by N by the fixed-order sum of common.cuh (no atomics) into the
// caller's stats tensor: nothing is read back.
#include "ops/cuda/common.cuh"
#include "ops/depth_gate.h"

namespace sy::ops::cuda {

static __global__ void gate_forward(float* w, const float* s, const int32_t* group, int64_t N, bool st) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  w[i] = group[i] < 0 ? 0.f : st ? 1.f : s[i];  // s / sg(s): 1 in value, also where s underflows to 0
}

static __global__ void gate_backward(float* dr, const float* dw, const float* dbudget, const float* s,
                                     const int32_t* slot, int64_t N, bool st) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  const float ds = __fmul_rn(s[i], 1.f - s[i]);
  float d = __fmul_rn(__fmul_rn(dbudget[i], s[i]), 1.f - s[i]);  // the CPU's (dbudget s)(1 - s)
  if (slot[i] >= 0) d = __fadd_rn(d, __fmul_rn(dw[i], st ? 1.f - s[i] : ds));
  dr[i] = d;
}

// terms[i] = -log(clamped p or 1 - p); terms[N + i] = 1 when the prediction agrees.
static __global__ void predictor_terms(float* dl, double* terms, const float* pred, const int32_t* group, int64_t N,
                                       float tau) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  const bool chosen = group[i] >= 0;
  // Clamped as the CPU clamps (std::min/max pass a NaN through: fmin/fmax would hide it).
  const double x = static_cast<double>(pred[i]);
  const double p = x != x ? x : fmin(fmax(x, 1e-7), 1 - 1e-7);
  terms[i] = chosen ? -log(p) : -log(1 - p);
  terms[N + i] = (pred[i] > tau) == chosen ? 1.0 : 0.0;
  dl[i] = (pred[i] - (chosen ? 1.f : 0.f)) / static_cast<float>(N);
}

void depth_gate_forward(Ctx& ctx, Tensor& w, const Tensor& s, const Route& r, bool straight_through) {
  if (r.num_items == 0) return;
  gate_forward<<<grid_for(r.num_items), kBlock, 0, stream(ctx)>>>(w.data<float>(), s.data<float>(),
                                                                  r.group.data<int32_t>(), r.num_items,
                                                                  straight_through);
  CUDA_CHECK(cudaGetLastError());
}

void depth_gate_backward(Ctx& ctx, Tensor& dr, const Tensor& dw, const Tensor& dbudget, const Tensor& s,
                         const Route& r, bool straight_through) {
  if (r.num_items == 0) return;
  gate_backward<<<grid_for(r.num_items), kBlock, 0, stream(ctx)>>>(dr.data<float>(), dw.data<float>(),
                                                                   dbudget.data<float>(), s.data<float>(),
                                                                   r.slot.data<int32_t>(), r.num_items,
                                                                   straight_through);
  CUDA_CHECK(cudaGetLastError());
}

void predictor_loss(Ctx& ctx, Tensor& dl, Tensor& stats, const Tensor& p, const Route& r, float tau) {
  const int64_t N = r.num_items;
  double* st = stats.data<double>();
  if (N == 0) {
    CUDA_CHECK(cudaMemsetAsync(st, 0, 2 * sizeof(double), stream(ctx)));  // the CPU's 0 / max(1, N)
    return;
  }
  Tensor terms = Tensor::empty({2 * N}, DType::f64, ctx);
  predictor_terms<<<grid_for(N), kBlock, 0, stream(ctx)>>>(dl.data<float>(), terms.data<double>(), p.data<float>(),
                                                           r.group.data<int32_t>(), N, tau);
  CUDA_CHECK(cudaGetLastError());
  sum_f64(ctx, terms.data<double>(), N, st, static_cast<double>(N));
  sum_f64(ctx, terms.data<double>() + N, N, st + 1, static_cast<double>(N));
}

}  // namespace sy::ops::cuda
