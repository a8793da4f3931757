// Sinkhorn balancing on CUDA (ops/sinkhorn.h): each iteration is three
// launches. Equation (1): a warp a row, each lane a running log-sum-exp
// (ops/cuda/online_softmax.h) over every 32nd expert, merged across the warp
// in a fixed butterfly (OnlineSoftmax::merge; tests/sinkhorn_test.cc
// replays these kernels' arithmetic on the host). Equation (2): each column's running log-sum-exp over
// chunks of kChunkRows rows (a thread a column, a block row a chunk: each
// row's G keys read by consecutive threads), then a thread a column merging
// its chunks in chunk order. No atomics: the same h on every run.
#include "ops/cuda/common.cuh"
#include "ops/cuda/online_softmax.h"
#include "ops/sinkhorn.h"

namespace sy::ops::cuda {

namespace {
constexpr int kChunkRows = 256;
constexpr int kColumnBlock = 128;

// (1): f[i] = -log N - LSE_g(a[i, g] + h[g]).
__global__ void rows_step(const float* a, const float* h, float* f, int64_t N, int64_t G, float log_n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= N) return;  // (a whole warp: i is the warp's)
  OnlineSoftmax o;
  for (int64_t g = lane; g < G; g += 32) o.add(a[i * G + g] + h[g]);
  for (int d = 16; d > 0; d /= 2) {
    OnlineSoftmax other;
    other.m = __shfl_xor_sync(0xffffffffu, o.m, d);
    other.s = __shfl_xor_sync(0xffffffffu, o.s, d);
    o = OnlineSoftmax::merge(o, other);
  }
  if (lane == 0) f[i] = -log_n - o.log_sum_exp();
}

// (2), first half: part[c, g] = the running LSE of a[i, g] + f[i] over chunk c's rows.
__global__ void column_partials(const float* a, const float* f, OnlineSoftmax* part, int64_t N, int64_t G) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, c = blockIdx.y;
  if (g >= G) return;
  const int64_t r1 = min(N, (c + 1) * kChunkRows);
  OnlineSoftmax o;
  for (int64_t i = c * kChunkRows; i < r1; ++i) o.add(a[i * G + g] + f[i]);
  part[c * G + g] = o;
}

// (2), second half: h[g] = -log G - LSE over the chunks, in chunk order.
__global__ void column_finish(const OnlineSoftmax* part, float* h, int64_t chunks, int64_t G, float log_g) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= G) return;
  OnlineSoftmax o;
  for (int64_t c = 0; c < chunks; ++c) o = OnlineSoftmax::merge(o, part[c * G + g]);
  h[g] = -log_g - o.log_sum_exp();
}
}  // namespace

void sinkhorn_balance(Ctx& ctx, Tensor& h, const Tensor& keys, int iters) {
  const int64_t N = keys.dim(0), G = keys.dim(1), chunks = (N + kChunkRows - 1) / kChunkRows;
  SY_CHECK(chunks <= 65535, "sinkhorn_balance: " << N << " tokens (CUDA takes at most " << 65535 * kChunkRows << ")");
  static_assert(sizeof(OnlineSoftmax) == 2 * sizeof(float), "a partial is two floats");
  Tensor f = Tensor::empty({N}, DType::f32, ctx);
  Tensor part = Tensor::empty({chunks * G * 2}, DType::f32, ctx);
  auto* parts = reinterpret_cast<OnlineSoftmax*>(part.data<float>());
  const float log_n = logf(static_cast<float>(N)), log_g = logf(static_cast<float>(G));
  // A column a thread: blocks of G threads rounded up to a warp (at most
  // kColumnBlock), so that a layer of 64 experts leaves no idle half-block.
  const int col_threads = static_cast<int>(std::min<int64_t>(kColumnBlock, (G + 31) / 32 * 32));
  const unsigned row_blocks = grid_for(N * 32), col_blocks = grid_for(G, col_threads);
  CUDA_CHECK(cudaMemsetAsync(h.raw(), 0, G * sizeof(float), stream(ctx)));
  for (int t = 0; t < iters; ++t) {
    rows_step<<<row_blocks, kBlock, 0, stream(ctx)>>>(keys.data<float>(), h.data<float>(), f.data<float>(), N, G,
                                                       log_n);
    column_partials<<<dim3(col_blocks, static_cast<unsigned>(chunks)), col_threads, 0, stream(ctx)>>>(
        keys.data<float>(), f.data<float>(), parts, N, G);
    column_finish<<<col_blocks, col_threads, 0, stream(ctx)>>>(parts, h.data<float>(), chunks, G, log_g);
  }
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace sy::ops::cuda
