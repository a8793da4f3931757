// Shared host helpers of the CUDA kernels (ops/cuda/common.cuh).
//
//   reduce_chunks:  block b sums x[b*kChunk, (b+1)*kChunk) in double: each
//                   thread a fixed strided subset in index order, then a fixed
//                   tree. Repeated until one value is left, so the order of
//                   every addition depends on n alone: deterministic. The
//                   last pass writes the total (sum_f64: where the caller
//                   says, on the device).
//   find_starts:    one thread per segment binary-searches the sorted keys
//                   (no atomics, no histogram).
#include "ops/cuda/common.cuh"

namespace sy::ops::cuda {

namespace {
constexpr int64_t kChunk = 4096;
}  // namespace

static __global__ void reduce_chunks(const double* x, int64_t n, double* out, double divisor) {
  __shared__ double scratch[kBlock];
  const int64_t base = blockIdx.x * kChunk;
  const int64_t end = min(n, base + kChunk);
  double s = 0;
  for (int64_t i = base + threadIdx.x; i < end; i += blockDim.x) s += x[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = s / divisor;  // divisor 1 on every pass but the last: exact
}

void sum_f64(Ctx& ctx, const double* x, int64_t n, double* out, double divisor) {
  if (n == 0) {
    CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), stream(ctx)));
    return;
  }
  Tensor buf[2];
  const double* in = x;
  int which = 0;
  for (;;) {
    const int64_t blocks = (n + kChunk - 1) / kChunk;
    if (blocks == 1) {
      reduce_chunks<<<1, kBlock, 0, stream(ctx)>>>(in, n, out, divisor);
      CUDA_CHECK(cudaGetLastError());
      return;
    }
    buf[which] = Tensor::empty({blocks}, DType::f64, ctx);
    reduce_chunks<<<static_cast<unsigned>(blocks), kBlock, 0, stream(ctx)>>>(in, n, buf[which].data<double>(), 1.0);
    CUDA_CHECK(cudaGetLastError());
    in = buf[which].data<double>();
    n = blocks;
    which ^= 1;
  }
}

double sum_f64_to_host(Ctx& ctx, const double* x, int64_t n) {
  if (n == 0) return 0.0;
  Tensor total = Tensor::empty({1}, DType::f64, ctx);
  sum_f64(ctx, x, n, total.data<double>());
  return download(ctx, total.data<double>(), 1)[0];
}

static __global__ void find_starts(const uint64_t* keys, int64_t n, int shift, int64_t segments, int32_t* starts) {
  const int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (s > segments) return;
  int64_t lo = 0, hi = n;  // first i with (keys[i] >> shift) >= s
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<int64_t>(keys[mid] >> shift) < s)
      lo = mid + 1;
    else
      hi = mid;
  }
  starts[s] = static_cast<int32_t>(lo);
}

void segment_starts(Ctx& ctx, const uint64_t* keys, int64_t n, int shift, int64_t segments, int32_t* starts) {
  find_starts<<<grid_for(segments + 1), kBlock, 0, stream(ctx)>>>(keys, n, shift, segments, starts);
  CUDA_CHECK(cudaGetLastError());
}

int bits_for(int64_t n) {
  int b = 0;
  while (b < 63 && (int64_t{1} << b) < n) ++b;
  return b;
}

}  // namespace sy::ops::cuda
