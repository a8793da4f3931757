// Rounding a size up to one of four steps an octave (5, 6, 7, 8, then 10,
// 12, 14, 16, ...): at most 25% over, and few distinct values over a wide
// range. The GEMM plans of a packed route's experts are kept per row count
// so rounded (ops/cuda/matmul.cu), and page-locked staging blocks past
// 1 MiB come in these sizes (core/pinned_allocator.h).
#pragma once
#include <cstdint>

namespace sy {

// v rounded up to a multiple of 2^(floor(log2 v) - 2); v itself up to 7.
inline uint64_t round_up_quarter_octave(uint64_t v) {
  int shift = 0;
  while ((v >> shift) > 7) ++shift;
  const uint64_t step = uint64_t{1} << shift;
  return (v + step - 1) / step * step;
}

}  // namespace sy
