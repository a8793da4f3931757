// Hash routing's keys on CUDA (ops/hash_routing.h): one thread a (row,
// expert), the same integer hash (or table entry) as the CPU's: bit for bit
// its keys.
#include "ops/cuda/common.cuh"
#include "ops/hash_routing.h"

namespace sy::ops::cuda {

namespace {
struct HashKeys {
  const int32_t* ids;
  const int32_t* table;  // null: the hash
  float* keys;
  int64_t G;
  uint64_t seed;
  __device__ void operator()(int64_t t) const {
    const int64_t i = t / G, g = t % G;
    const int64_t e = table ? table[ids[i]] : hashed_expert(ids[i], seed, G);
    keys[t] = g == e ? 0.f : -__builtin_huge_valf();
  }
};
}  // namespace

void hash_route_keys(Ctx& ctx, Tensor& keys, const Tensor& ids, uint64_t seed, const Tensor& table) {
  const int64_t N = keys.dim(0), G = keys.dim(1);
  const Launch run{stream(ctx)};
  run(N * G, HashKeys{ids.data<int32_t>(), table.defined() ? table.data<int32_t>() : nullptr, keys.data<float>(), G,
                      seed});
}

}  // namespace sy::ops::cuda
