// Group-limited routing on CUDA (ops/group_limit.h): two launches of one
// thread an index over group_limit_rows.h's steps. First every (row, group)
// score into an (N, R) scratch; then every (row, expert) its key or -inf by
// its group's rank among the row's. No sort, no atomics: the same float sums
// in the same order as the CPU reference, so the output is bitwise its.
#include "ops/cuda/common.cuh"
#include "ops/cuda/group_limit_rows.h"

namespace sy::ops::cuda {

namespace {
struct GroupScores {
  const float *key, *bias;
  float* scores;  // (N, R)
  int64_t G, R, M, top_n;
  __device__ void operator()(int64_t t) const {
    const int64_t i = t / R, j = t % R;
    scores[t] = group_score(key + i * G, bias, j, M, top_n);
  }
};

struct KeepGroups {
  const float *key, *scores;
  float* out;
  int64_t G, R, M, kept;
  __device__ void operator()(int64_t t) const {
    const int64_t i = t / G, g = t % G;
    out[t] = group_kept(scores + i * R, R, g / M, kept) ? key[t] : -__builtin_huge_valf();
  }
};
}  // namespace

void limit_groups(Ctx& ctx, Tensor& out, const Tensor& key, const Tensor* bias, const GroupLimit& gl) {
  const int64_t N = key.dim(0), G = key.dim(1), R = gl.groups, M = G / R;
  Tensor scores = Tensor::empty({N, R}, DType::f32, ctx);
  const Launch run{stream(ctx)};
  run(N * R, GroupScores{key.data<float>(), bias ? bias->data<float>() : nullptr, scores.data<float>(), G, R, M, gl.top_n});
  run(N * G, KeepGroups{key.data<float>(), scores.data<float>(), out.data<float>(), G, R, M, gl.kept});
}

}  // namespace sy::ops::cuda
