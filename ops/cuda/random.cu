// Counter-based random tensors on CUDA: thread i computes element i's
// Philox-4x32-10 block from (seed, stream, step, offset + i) with the same
// inline function the CPU uses (core/philox.h), so the words are bitwise the
// CPU's by construction; uniform values are exact too (bits_to_uniform is
// exact in float). Normal and Gumbel go through CUDA's logf/cosf/sqrtf
// (within a few ulp of libm: class F, see ops/random.h).
#include "ops/cuda/common.cuh"
#include "ops/random.h"

namespace sy::ops::cuda {

namespace {
constexpr float kTwoPi = 6.28318530717958647692f;

enum class Dist { uniform, normal, gumbel };
}  // namespace

static __global__ void fill_random(float* out, int64_t n, RandomKey key, Dist dist, float a, float b) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Philox4 w = random_bits(key, static_cast<uint64_t>(i));
    const float u = bits_to_uniform(w.v[0]);
    if (dist == Dist::uniform) {
      out[i] = __fadd_rn(a, __fmul_rn(b - a, u));  // a = lo, b = hi; no FMA: the CPU's rounding
    } else if (dist == Dist::normal) {
      const float v = bits_to_uniform(w.v[1]);
      out[i] = a * (sqrtf(-2.f * logf(u)) * cosf(kTwoPi * v));  // a = std
    } else {
      out[i] = -a * logf(-logf(u));  // a = scale
    }
  }
}

namespace {
void launch(Ctx& ctx, Tensor& out, const RandomKey& key, Dist dist, float a, float b) {
  const int64_t n = out.numel();
  if (n == 0) return;
  fill_random<<<grid_stride(n), kBlock, 0, stream(ctx)>>>(out.data<float>(), n, key,
                                                                                        dist, a, b);
  CUDA_CHECK(cudaGetLastError());
}
}  // namespace

void random_uniform(Ctx& ctx, Tensor& out, const RandomKey& key, float lo, float hi) {
  launch(ctx, out, key, Dist::uniform, lo, hi);
}

void random_normal(Ctx& ctx, Tensor& out, const RandomKey& key, float std) { launch(ctx, out, key, Dist::normal, std, 0.f); }

void random_gumbel(Ctx& ctx, Tensor& out, const RandomKey& key, float scale) {
  launch(ctx, out, key, Dist::gumbel, scale, 0.f);
}

}  // namespace sy::ops::cuda
