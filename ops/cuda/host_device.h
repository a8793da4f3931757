// What the rows headers (ops/cuda/*_rows.h, attention_tiles.h,
// column_select.h) share: functions that compile for the host (CPU tests
// replay the GPU's steps) and, under nvcc, for the device too. No CUDA
// headers: SY_HD is __host__ __device__ under nvcc only.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SY_HD __host__ __device__
#else
#define SY_HD
#endif

namespace sy::ops {

// A score as the routing sorts rank it: NaN as -inf, last (ops/cpu/routing.cc's
// nan_last; ordered_bits alone puts a positive NaN above +inf).
SY_HD inline float nan_last(float x) { return x != x ? -__builtin_huge_valf() : x; }

// A float's bits as an unsigned integer of the same order (radix sort and
// select keys): ascending floats give ascending keys; -0 and +0 give one key
// (they compare equal).
SY_HD inline uint32_t ordered_bits(float x) {
  if (x == 0.f) x = 0.f;
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);  // (a register move on the device)
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace sy::ops
