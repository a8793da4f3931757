// The one place that instantiates CUB (ops/cuda/cub_ops.cu): each CUB
// algorithm costs seconds of nvcc time, so kernels call these plain wrappers
// instead of including <cub/cub.cuh>.
#pragma once
#include <cstdint>

#include "core/context.h"

namespace sy::ops::cuda {

// Stable ascending radix sort of n (key, value) pairs on key bits
// [begin_bit, end_bit): pairs with equal keys keep their input order. Scratch
// comes from ctx's allocator; ordered on ctx's stream.
void radix_sort_pairs(Ctx& ctx, const uint64_t* keys_in, uint64_t* keys_out, const int32_t* values_in,
                      int32_t* values_out, int64_t n, int begin_bit, int end_bit);

}  // namespace sy::ops::cuda
