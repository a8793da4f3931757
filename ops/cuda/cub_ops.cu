// CUB behind plain functions (see cub_ops.h). DeviceRadixSort is stable and
// run-to-run deterministic (no atomics in its result).
#include <cub/device/device_radix_sort.cuh>

#include "ops/cuda/common.cuh"
#include "ops/cuda/cub_ops.h"

namespace sy::ops::cuda {

void radix_sort_pairs(Ctx& ctx, const uint64_t* keys_in, uint64_t* keys_out, const int32_t* values_in,
                      int32_t* values_out, int64_t n, int begin_bit, int end_bit) {
  if (n == 0) return;
  SY_CHECK(n < (int64_t{1} << 31), "radix_sort_pairs: " << n << " pairs (at most 2^31 - 1)");
  SY_CHECK(begin_bit >= 0 && end_bit <= 64, "radix_sort_pairs: bits [" << begin_bit << ", " << end_bit
                                                                        << ") of a 64-bit key");
  if (end_bit <= begin_bit) {  // nothing to sort on: the input order is the sorted order
    CUDA_CHECK(cudaMemcpyAsync(keys_out, keys_in, n * sizeof(uint64_t), cudaMemcpyDeviceToDevice, stream(ctx)));
    CUDA_CHECK(cudaMemcpyAsync(values_out, values_in, n * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream(ctx)));
    return;
  }
  const int items = static_cast<int>(n);
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys_in, keys_out, values_in, values_out, items,
                                             begin_bit, end_bit, stream(ctx)));
  Tensor scratch = Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::f64, ctx);  // 8-byte aligned bytes
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch.raw(), bytes, keys_in, keys_out, values_in, values_out, items,
                                             begin_bit, end_bit, stream(ctx)));
}

}  // namespace sy::ops::cuda
