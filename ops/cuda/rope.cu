// RoPE on CUDA: one thread per (row, pair) index, the function of
// ops/cuda/rope_rows.h (tested on the host against the CPU reference), in a
// grid-stride loop. Angles, cos and sin in double as on the CPU (sm_90 runs
// fp64 at half the fp32 rate; one cos/sin pair per thread serves every head).
// In place, each thread owning its pair in every head: deterministic.
#include "ops/cuda/common.cuh"
#include "ops/cuda/rope_rows.h"
#include "ops/rope.h"

namespace sy::ops::cuda {

namespace {
void rotate(Ctx& ctx, const RopeArgs& a, float sign) {
  const int64_t N = a.x.dim(0);
  if (N == 0 || a.heads == 0) return;
  const rope_rows::Rotate f{a.x.data<float>(), a.positions.defined() ? a.positions.data<int32_t>() : nullptr,
                            a.x.dim(1), a.seq_len, a.heads, a.head_dim, a.base, sign};
  Launch{stream(ctx)}(f.count(N), f);
}
}  // namespace

void rope_forward(Ctx& ctx, const RopeArgs& a) { rotate(ctx, a, 1.f); }

void rope_backward(Ctx& ctx, const RopeBackwardArgs& a) { rotate(ctx, a, -1.f); }

}  // namespace sy::ops::cuda
