// The reference: every row's expert (hashed, or the table's) 0, the rest
// -inf (ops/hash_routing.h).
#include "ops/hash_routing.h"

#include <limits>

namespace sy::ops::cpu {

void hash_route_keys(Ctx&, Tensor& keys, const Tensor& ids, uint64_t seed, const Tensor& table) {
  const int64_t N = keys.dim(0), G = keys.dim(1);
  const int32_t* id = ids.data<int32_t>();
  const int32_t* map = table.defined() ? table.data<int32_t>() : nullptr;
  float* k = keys.f32();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t e = map ? map[id[i]] : hashed_expert(id[i], seed, G);
    for (int64_t g = 0; g < G; ++g) k[i * G + g] = g == e ? 0.f : -std::numeric_limits<float>::infinity();
  }
}

}  // namespace sy::ops::cpu
