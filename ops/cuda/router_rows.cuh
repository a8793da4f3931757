// Router rows in registers, shared by the gating (ops/cuda/routing.cu) and
// the router's backward (ops/cuda/router_loss.cu): a row of G <= 128 fp32
// values held by L = 8 or 16 lanes (32 / L rows a warp), lane `sub` holding
// the NV adjacent values sub NV + j, j < NV, read and written as 16-byte
// chunks where the rows allow (row_vec). Reductions over a row are
// butterflies over its L lanes (warp_sum<T, L>: offsets below L never leave
// the row).
#pragma once
#include <initializer_list>
#include <type_traits>

#include "ops/cuda/common.cuh"

namespace sy::ops::cuda {

// Rows of G <= 128 groups in registers: L lanes a row, NV values a lane,
// NV a power of two (the values past G are skipped: fewer instances).
struct RowLayout {
  int L, NV;
};
inline RowLayout row_layout(int64_t G) {
  const int L = G <= 64 ? 8 : 16;
  int NV = 1;
  while (NV * L < G) NV *= 2;
  return {L, NV};
}
// Calls f(integral_constant L, integral_constant NV) for G's layout (G <= 128).
template <class F>
void with_row_layout(int64_t G, F&& f) {
  using std::integral_constant;
  const RowLayout r = row_layout(G);
  if (r.L == 16) return f(integral_constant<int, 16>{}, integral_constant<int, 8>{});
  switch (r.NV) {
    case 1: return f(integral_constant<int, 8>{}, integral_constant<int, 1>{});
    case 2: return f(integral_constant<int, 8>{}, integral_constant<int, 2>{});
    case 4: return f(integral_constant<int, 8>{}, integral_constant<int, 4>{});
    default: return f(integral_constant<int, 8>{}, integral_constant<int, 8>{});
  }
}
// Rows a block of the register kernels holds.
template <int L>
__host__ __device__ constexpr int rows_per_block() {
  return kBlock / L;
}

template <int NV>
__device__ __forceinline__ void load_row(float (&v)[NV], const float* row, int64_t G, int sub, bool valid, bool vec) {
  const int g0 = sub * NV;
  if constexpr (NV % 4 == 0) {
    if (vec) {  // G % 4 == 0 and the rows 16-byte aligned: a 4-group chunk is all in range or all out
#pragma unroll
      for (int q = 0; q < NV / 4; ++q) {
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (valid && g0 + 4 * q < G) x = *reinterpret_cast<const float4*>(row + g0 + 4 * q);
        v[4 * q] = x.x, v[4 * q + 1] = x.y, v[4 * q + 2] = x.z, v[4 * q + 3] = x.w;
      }
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < NV; ++j) v[j] = valid && g0 + j < G ? row[g0 + j] : 0.f;
}

template <int NV>
__device__ __forceinline__ void store_row(float* row, const float (&v)[NV], int64_t G, int sub, bool vec) {
  const int g0 = sub * NV;
  if constexpr (NV % 4 == 0) {
    if (vec) {
#pragma unroll
      for (int q = 0; q < NV / 4; ++q)
        if (g0 + 4 * q < G)
          *reinterpret_cast<float4*>(row + g0 + 4 * q) = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (g0 + j < G) row[g0 + j] = v[j];
}

// Whether rows of G floats at these bases can be read as 16-byte chunks.
inline bool row_vec(int64_t G, std::initializer_list<const float*> bases) {
  if (G % 4 != 0) return false;
  for (const float* b : bases)
    if (b && !aligned16(b)) return false;
  return true;
}

// A row's softmax numerators in registers (router_scores' arithmetic, so
// every kernel that recomputes the probabilities gets the gating's bits):
// v becomes exp(v - max) for the row's groups, max and sum the row's (over
// its L lanes); p = v / sum. Values past G are left as they are.
template <int L, int NV>
__device__ __forceinline__ void row_exp(float (&v)[NV], int64_t G, int sub, float& max, float& sum) {
  const int g0 = sub * NV;
  max = -INFINITY;
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (g0 + j < G) max = fmaxf(max, v[j]);
  max = warp_max<float, L>(max);
  sum = 0.f;
#pragma unroll
  for (int j = 0; j < NV; ++j)
    if (g0 + j < G) sum += (v[j] = expf(v[j] - max));
  sum = warp_sum<float, L>(sum);
}

}  // namespace sy::ops::cuda
