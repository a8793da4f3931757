// Moving rows along a Route on CUDA (ops/dispatch.h). Assignment a = i*k + j
// lives in buffer row offset[group[a]] + slot[a] when slot[a] >= 0.
//
// dispatch forward:  one thread per (assignment, column): buf[row(a)] = x[i]
//                    (each buffer row has one owner; a pure copy).
// dispatch backward: one thread per (item, column): dx[i] += dbuf[row(a)] for
//                    j = 0..k-1 in order: the item owns its row, no atomics.
// combine forward:   one thread per (item, column): y[i] = sum_j w[a] out[row(a)]
//                    in choice order, from 0.
// combine backward:  one warp per assignment: dout[row(a)] = w[a] dy[i] and
//                    dweight[a] = dy[i] . out[row(a)] (lane partials, fixed
//                    butterfly), 0 for dropped assignments.
// residual_combine:  one thread per (item, column) forward; one warp per item
//                    backward (dz, dx, and dw_i as a warp dot).
// dispatch_positions: one thread per assignment: pos[row(a)] = (a / k) mod
//                    segment (each buffer row has one owner; integers, exact).
// Products and sums that the CPU rounds separately are written with
// __fmul_rn/__fadd_rn (no FMA contraction), so the movement ops and the
// combine sums are bitwise the CPU's; the warp dots are class F.
#include "ops/cuda/common.cuh"
#include "ops/dispatch.h"

namespace sy::ops::cuda {

namespace {
constexpr int kWarps = kBlock / 32;

struct RouteView {
  const int32_t* group;
  const int32_t* slot;
  const int32_t* offset;
  const float* weight;
  int64_t N, k;
  // Buffer row of assignment a, or -1 (unused or dropped).
  __device__ int64_t row(int64_t a) const {
    const int32_t s = slot[a];
    return s < 0 ? -1 : static_cast<int64_t>(offset[group[a]]) + s;
  }
};

RouteView view(const Route& r) {
  return {r.group.data<int32_t>(), r.slot.data<int32_t>(), r.offset.data<int32_t>(), r.weight.data<float>(),
          r.num_items, r.k};
}
}  // namespace

template <class T>
static __global__ void dispatch_rows(T* buf, const T* x, RouteView r, int64_t D) {
  const int64_t total = r.N * r.k * D;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t a = t / D, c = t % D;
    const int64_t row = r.row(a);
    if (row >= 0) buf[row * D + c] = x[(a / r.k) * D + c];
  }
}

static __global__ void dispatch_backward_rows(float* dx, const float* dbuf, RouteView r, int64_t D) {
  const int64_t total = r.N * D;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / D, c = t % D;
    float acc = dx[t];
    for (int64_t a = i * r.k; a < (i + 1) * r.k; ++a) {
      const int64_t row = r.row(a);
      if (row >= 0) acc += dbuf[row * D + c];
    }
    dx[t] = acc;
  }
}

template <class T>
static __global__ void combine_rows(float* y, const T* out, RouteView r, int64_t D) {
  const int64_t total = r.N * D;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / D, c = t % D;
    float acc = 0.f;
    for (int64_t a = i * r.k; a < (i + 1) * r.k; ++a) {
      const int64_t row = r.row(a);
      if (row >= 0) acc = __fadd_rn(acc, __fmul_rn(r.weight[a], to_float(out[row * D + c])));
    }
    y[t] = acc;
  }
}

template <class T>
static __global__ void combine_backward_rows(float* dout, float* dweight, const float* dy, const T* out, RouteView r,
                                             int64_t D) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (a >= r.N * r.k) return;
  const int64_t row = r.row(a);
  if (row < 0) {
    if (lane == 0) dweight[a] = 0.f;
    return;
  }
  const float* g = dy + (a / r.k) * D;
  const T* o = out + row * D;
  float* d = dout + row * D;
  const float w = r.weight[a];
  float dot = 0.f;
  for (int64_t c = lane; c < D; c += 32) {
    d[c] = w * g[c];
    dot += g[c] * to_float(o[c]);
  }
  dot = warp_sum(dot);
  if (lane == 0) dweight[a] = dot;
}

static __global__ void residual_combine_rows(float* y, const float* x, const float* z, const float* w, RouteView r,
                                             int64_t C) {
  const int64_t total = r.N * C;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / C, c = t % C;
    const int64_t row = r.row(i);
    y[t] = row < 0 ? x[t] : __fadd_rn(__fmul_rn(1.f - w[i], x[t]), __fmul_rn(w[i], z[row * C + c]));
  }
}

static __global__ void residual_combine_backward_rows(float* dx, float* dz, float* dw, const float* dy, const float* x,
                                                      const float* z, const float* w, RouteView r, int64_t C) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= r.N) return;
  const float* g = dy + i * C;
  float* dxr = dx + i * C;
  const int64_t row = r.row(i);
  if (row < 0) {
    for (int64_t c = lane; c < C; c += 32) dxr[c] += g[c];
    if (lane == 0) dw[i] = 0.f;
    return;
  }
  const float* xr = x + i * C;
  const float* zr = z + row * C;
  float* dzr = dz + row * C;
  float d = 0.f;
  for (int64_t c = lane; c < C; c += 32) {
    dzr[c] = w[i] * g[c];
    dxr[c] = __fadd_rn(dxr[c], __fmul_rn(1.f - w[i], g[c]));
    d += g[c] * (zr[c] - xr[c]);
  }
  d = warp_sum(d);
  if (lane == 0) dw[i] = d;
}

static __global__ void dispatch_position_rows(int32_t* pos, RouteView r, int64_t segment) {
  const int64_t total = r.N * r.k;
  for (int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; a < total;
       a += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = r.row(a);
    if (row >= 0) pos[row] = static_cast<int32_t>((a / r.k) % segment);
  }
}

void dispatch_forward(Ctx& ctx, Tensor& buf, const Tensor& x, const Route& r) {
  const int64_t D = x.dim(1), total = r.assignments() * D;
  if (total == 0) return;
  dispatch_rows<float><<<grid_stride(total), kBlock, 0, stream(ctx)>>>(buf.data<float>(), x.data<float>(), view(r), D);
  CUDA_CHECK(cudaGetLastError());
}

void dispatch_backward(Ctx& ctx, Tensor& dx, const Tensor& dbuf, const Route& r) {
  const int64_t D = dx.dim(1), total = r.num_items * D;
  if (total == 0) return;
  dispatch_backward_rows<<<grid_stride(total), kBlock, 0, stream(ctx)>>>(dx.data<float>(), dbuf.data<float>(),
                                                                         view(r), D);
  CUDA_CHECK(cudaGetLastError());
}

void combine_forward(Ctx& ctx, Tensor& y, const Tensor& out, const Route& r) {
  const int64_t D = y.dim(1), total = r.num_items * D;
  if (total == 0) return;
  combine_rows<float><<<grid_stride(total), kBlock, 0, stream(ctx)>>>(y.data<float>(), out.data<float>(), view(r), D);
  CUDA_CHECK(cudaGetLastError());
}

void combine_backward(Ctx& ctx, Tensor& dout, Tensor& dweight, const Tensor& dy, const Tensor& out, const Route& r) {
  const int64_t D = dy.dim(1);
  if (r.assignments() == 0) return;
  combine_backward_rows<float><<<grid_for(r.assignments(), kWarps), kBlock, 0, stream(ctx)>>>(
      dout.data<float>(), dweight.data<float>(), dy.data<float>(), out.data<float>(), view(r), D);
  CUDA_CHECK(cudaGetLastError());
}

void residual_combine_forward(Ctx& ctx, Tensor& y, const Tensor& x, const Tensor& z, const Tensor& w, const Route& r) {
  const int64_t C = x.dim(1), total = r.num_items * C;
  if (total == 0) return;
  residual_combine_rows<<<grid_stride(total), kBlock, 0, stream(ctx)>>>(y.data<float>(), x.data<float>(),
                                                                        z.data<float>(), w.data<float>(), view(r), C);
  CUDA_CHECK(cudaGetLastError());
}

void residual_combine_backward(Ctx& ctx, Tensor& dx, Tensor& dz, Tensor& dw, const Tensor& dy, const Tensor& x,
                               const Tensor& z, const Tensor& w, const Route& r) {
  const int64_t C = x.dim(1);
  if (r.num_items == 0) return;
  residual_combine_backward_rows<<<grid_for(r.num_items, kWarps), kBlock, 0, stream(ctx)>>>(
      dx.data<float>(), dz.data<float>(), dw.data<float>(), dy.data<float>(), x.data<float>(), z.data<float>(),
      w.data<float>(), view(r), C);
  CUDA_CHECK(cudaGetLastError());
}

void dispatch_positions(Ctx& ctx, Tensor& pos, const Route& r, int64_t segment) {
  const int64_t total = r.assignments();
  if (total == 0) return;
  dispatch_position_rows<<<grid_stride(total), kBlock, 0, stream(ctx)>>>(pos.data<int32_t>(), view(r), segment);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace sy::ops::cuda
