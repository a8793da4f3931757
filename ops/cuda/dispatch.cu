// Moving rows along a Route on CUDA (ops/dispatch.h). Assignment a = i*k + j
// lives in buffer row offset[group[a]] + slot[a] when slot[a] >= 0.
//
// The row movers give each row of D values to one warp, which walks it in
// chunks of V = 4 consecutive values (16-byte loads; 8-byte bf16 stores)
// where D % 4 == 0 and every row pointer is aligned, else V = 1: the index
// arithmetic is per row, not per element, and the loads are wide.
// dispatch forward:  a warp per assignment: buf[row(a)] = x[i] (f32, or
//                    rounded to bf16); each buffer row has one owner.
// dispatch backward: a warp per item: dx[i] += dbuf[row(a)] for j = 0..k-1
//                    in order (or from 0: accumulate false): the item owns
//                    its row, no atomics.
// combine forward:   a warp per item: y[i] = sum_j w[a] out[row(a)] in
//                    choice order, from 0.
// combine backward:  a warp per assignment: dout[row(a)] = w[a] dy[i] (f32,
//                    or rounded to bf16 as it is stored) and
//                    dweight[a] = dy[i] . out[row(a)] (lane partials, fixed
//                    butterfly), 0 for dropped assignments.
// unused rows:       a padded route's rows past count[g] (dispatch's buf,
//                    combine backward's dout) set to 0, a warp per row of
//                    the G x capacity buffer; other routes have none.
// residual_combine:  one thread per (item, column) forward; one warp per item
//                    backward (dz, dx, and dw_i as a warp dot).
// dispatch_positions: one thread per assignment: pos[row(a)] = (a / k) mod
//                    segment (each buffer row has one owner; integers, exact).
// Products and sums that the CPU rounds separately are written with
// __fmul_rn/__fadd_rn (no FMA contraction), so the movement ops and the
// combine sums are bitwise the CPU's (bf16 stores round to nearest even, as
// core/dtype.h does for every number; a NaN becomes the canonical 0x7FFF
// where the CPU keeps its sign); the warp dots are class F.
#include "ops/cuda/common.cuh"
#include "ops/dispatch.h"

#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>

namespace sy::ops::cuda {

namespace {
constexpr int kWarps = kBlock / 32;

struct RouteView {
  const int32_t* group;
  const int32_t* slot;
  const int32_t* offset;
  const int32_t* count;
  const float* weight;
  int64_t N, k;
  // Buffer row of assignment a, or -1 (unused or dropped).
  __device__ int64_t row(int64_t a) const {
    const int32_t s = slot[a];
    return s < 0 ? -1 : static_cast<int64_t>(offset[group[a]]) + s;
  }
};

RouteView view(const Route& r) {
  return {r.group.data<int32_t>(), r.slot.data<int32_t>(), r.offset.data<int32_t>(), r.count.data<int32_t>(),
          r.weight.data<float>(), r.num_items, r.k};
}

// V consecutive values of a row, loaded and stored in one access.
template <int V>
struct Chunk {
  float v[V];
};

template <int V>
__device__ __forceinline__ Chunk<V> load(const float* p) {
  Chunk<V> c;
  if constexpr (V == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    c.v[0] = q.x, c.v[1] = q.y, c.v[2] = q.z, c.v[3] = q.w;
  } else {
    c.v[0] = *p;
  }
  return c;
}

template <int V>
__device__ __forceinline__ void store(float* p, const Chunk<V>& c) {
  if constexpr (V == 4)
    *reinterpret_cast<float4*>(p) = make_float4(c.v[0], c.v[1], c.v[2], c.v[3]);
  else
    *p = c.v[0];
}

template <int V>
__device__ __forceinline__ void store(__nv_bfloat16* p, const Chunk<V>& c) {
  if constexpr (V == 4) {
    // Each half rounded to nearest even, as __float2bfloat16_rn (core/dtype.h's rounding)
    const __nv_bfloat162 lo = __floats2bfloat162_rn(c.v[0], c.v[1]), hi = __floats2bfloat162_rn(c.v[2], c.v[3]);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&lo);
    u.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p) = u;
  } else {
    *p = __float2bfloat16_rn(c.v[0]);
  }
}

// V = 4 where every row of every pointer starts on a 16-byte boundary (f32
// rows; bf16 rows on 8 bytes, which 16 implies for the base).
bool wide_rows(int64_t D, std::initializer_list<const void*> ps) {
  return D % 4 == 0 && aligned16(ps);
}

// Warp w of the grid, and its lane.
__device__ __forceinline__ int64_t warp_index() { return blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32; }
__device__ __forceinline__ int lane_index() { return threadIdx.x % 32; }
}  // namespace

template <int V, class T>
static __global__ void dispatch_rows(T* buf, const float* x, RouteView r, int64_t D) {
  const int64_t a = warp_index();
  if (a >= r.N * r.k) return;
  const int64_t row = r.row(a);
  if (row < 0) return;
  const float* src = x + (a / r.k) * D;
  T* dst = buf + row * D;
  for (int64_t c = lane_index() * V; c < D; c += 32 * V) store<V>(dst + c, load<V>(src + c));
}

// A padded route's rows past count[g] (row = g * capacity + s, s >= count[g]) set to 0.
template <int V, class T>
static __global__ void zero_unused_rows(T* rows, RouteView r, int64_t capacity, int64_t total_rows, int64_t D) {
  const int64_t row = warp_index();
  if (row >= total_rows) return;
  if (row % capacity < r.count[row / capacity]) return;
  Chunk<V> zero;
  for (int e = 0; e < V; ++e) zero.v[e] = 0.f;
  for (int64_t c = lane_index() * V; c < D; c += 32 * V) store<V>(rows + row * D + c, zero);
}

template <int V>
static __global__ void dispatch_backward_rows(float* dx, const float* dbuf, RouteView r, int64_t D, bool accumulate) {
  const int64_t i = warp_index();
  if (i >= r.N) return;
  for (int64_t c = lane_index() * V; c < D; c += 32 * V) {
    Chunk<V> acc;
    if (accumulate)
      acc = load<V>(dx + i * D + c);
    else
      for (int e = 0; e < V; ++e) acc.v[e] = 0.f;  // (0 + the first row: a zero fill's bits)
    for (int64_t a = i * r.k; a < (i + 1) * r.k; ++a) {
      const int64_t row = r.row(a);
      if (row < 0) continue;
      const Chunk<V> g = load<V>(dbuf + row * D + c);
      for (int e = 0; e < V; ++e) acc.v[e] = __fadd_rn(acc.v[e], g.v[e]);
    }
    store<V>(dx + i * D + c, acc);
  }
}

template <int V>
static __global__ void combine_rows(float* y, const float* out, RouteView r, int64_t D) {
  const int64_t i = warp_index();
  if (i >= r.N) return;
  for (int64_t c = lane_index() * V; c < D; c += 32 * V) {
    Chunk<V> acc;
    for (int e = 0; e < V; ++e) acc.v[e] = 0.f;
    for (int64_t a = i * r.k; a < (i + 1) * r.k; ++a) {
      const int64_t row = r.row(a);
      if (row < 0) continue;
      const float w = r.weight[a];
      const Chunk<V> o = load<V>(out + row * D + c);
      for (int e = 0; e < V; ++e) acc.v[e] = __fadd_rn(acc.v[e], __fmul_rn(w, o.v[e]));
    }
    store<V>(y + i * D + c, acc);
  }
}

// V is chosen by dy and out alone (it orders dweight's sums: the same bits
// whatever dout's type and address); dout's chunks are stored whole where
// its rows allow (store_wide), else value by value.
template <int V, class T>
static __global__ void combine_backward_rows(T* dout, float* dweight, const float* dy, const float* out,
                                             RouteView r, int64_t D, bool store_wide) {
  const int64_t a = warp_index();
  if (a >= r.N * r.k) return;
  const int lane = lane_index();
  const int64_t row = r.row(a);
  if (row < 0) {
    if (lane == 0) dweight[a] = 0.f;
    return;
  }
  const float* g = dy + (a / r.k) * D;
  const float* o = out + row * D;
  T* d = dout + row * D;
  const float w = r.weight[a];
  float dot = 0.f;
  for (int64_t c = lane * V; c < D; c += 32 * V) {
    const Chunk<V> gc = load<V>(g + c), oc = load<V>(o + c);
    Chunk<V> dc;
    for (int e = 0; e < V; ++e) {
      dc.v[e] = __fmul_rn(w, gc.v[e]);
      dot += gc.v[e] * oc.v[e];
    }
    if (store_wide) {
      store<V>(d + c, dc);
    } else {
      for (int e = 0; e < V; ++e) {
        Chunk<1> one;
        one.v[0] = dc.v[e];
        store<1>(d + c + e, one);
      }
    }
  }
  dot = warp_sum(dot);
  if (lane == 0) dweight[a] = dot;
}

namespace {
// kernel<4> or kernel<1> (wide_rows) over `warps` warps (a row type T the
// kernel has is deduced from its arguments).
#define SY_ROW_LAUNCH(wide, warps, kernel, ...)                                                 \
  do {                                                                                         \
    if (wide)                                                                                  \
      kernel<4><<<grid_for(warps, kWarps), kBlock, 0, stream(ctx)>>>(__VA_ARGS__);             \
    else                                                                                       \
      kernel<1><<<grid_for(warps, kWarps), kBlock, 0, stream(ctx)>>>(__VA_ARGS__);             \
    CUDA_CHECK(cudaGetLastError());                                                            \
  } while (0)

template <class T>
void zero_unused(Ctx& ctx, Tensor& rows, const Route& r) {
  const int64_t n = rows.dim(0), D = rows.dim(1);
  if (!r.padded || n == 0 || r.capacity <= 0) return;  // other routes' rows are all kept
  T* p = static_cast<T*>(rows.raw());  // (the entry points checked the dtype)
  SY_ROW_LAUNCH(wide_rows(D, {p}), n, zero_unused_rows, p, view(r), r.capacity, n, D);
}

template <class T>
void dispatch_into(Ctx& ctx, Tensor& buf, const Tensor& x, const Route& r) {
  const int64_t D = x.dim(1);
  T* b = static_cast<T*>(buf.raw());  // (dispatch_forward picked T by the dtype)
  const float* xs = x.data<float>();
  if (r.assignments() > 0 && D > 0)
    SY_ROW_LAUNCH(wide_rows(D, {b, xs}), r.assignments(), dispatch_rows, b, xs, view(r), D);
  zero_unused<T>(ctx, buf, r);
}
}  // namespace

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
  if (buf.dtype() == DType::bf16)
    dispatch_into<__nv_bfloat16>(ctx, buf, x, r);
  else
    dispatch_into<float>(ctx, buf, x, r);
}

void dispatch_backward(Ctx& ctx, Tensor& dx, const Tensor& dbuf, const Route& r, bool accumulate) {
  const int64_t D = dx.dim(1);
  if (r.num_items == 0 || D == 0) return;
  float* d = dx.data<float>();
  const float* b = dbuf.data<float>();
  SY_ROW_LAUNCH(wide_rows(D, {d, b}), r.num_items, dispatch_backward_rows, d, b, view(r), D, accumulate);
}

void combine_forward(Ctx& ctx, Tensor& y, const Tensor& out, const Route& r) {
  const int64_t D = y.dim(1);
  if (r.num_items == 0 || D == 0) return;
  float* ys = y.data<float>();
  const float* o = out.data<float>();
  SY_ROW_LAUNCH(wide_rows(D, {ys, o}), r.num_items, combine_rows, ys, o, view(r), D);
}

namespace {
template <class T>
void combine_backward_into(Ctx& ctx, Tensor& dout, Tensor& dweight, const Tensor& dy, const Tensor& out,
                           const Route& r) {
  const int64_t D = dy.dim(1);
  if (r.assignments() > 0) {
    T* d = static_cast<T*>(dout.raw());  // (combine_backward picked T by the dtype)
    float* dw = dweight.data<float>();
    const float *g = dy.data<float>(), *o = out.data<float>();
    // 4-value stores: every row of dout on a 4-value boundary (16 bytes f32, 8 bf16)
    const bool store_wide = D % 4 == 0 && reinterpret_cast<uintptr_t>(d) % (4 * sizeof(T)) == 0;
    SY_ROW_LAUNCH(wide_rows(D, {g, o}), r.assignments(), combine_backward_rows, d, dw, g, o, view(r), D, store_wide);
  }
  zero_unused<T>(ctx, dout, r);
}
}  // namespace

void combine_backward(Ctx& ctx, Tensor& dout, Tensor& dweight, const Tensor& dy, const Tensor& out, const Route& r) {
  if (dout.dtype() == DType::bf16)
    combine_backward_into<__nv_bfloat16>(ctx, dout, dweight, dy, out, r);
  else
    combine_backward_into<float>(ctx, dout, dweight, dy, out, r);
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

#undef SY_ROW_LAUNCH

}  // namespace sy::ops::cuda
