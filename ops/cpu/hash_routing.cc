// The reference: every row's hashed expert 0, the rest -inf (ops/hash_routing.h).
#include "ops/hash_routing.h"

#include <limits>

namespace sy::ops::cpu {

void hash_route_keys(Ctx&, Tensor& keys, const Tensor& ids, uint64_t seed) {
  const int64_t N = keys.dim(0), G = keys.dim(1);
  const int32_t* id = ids.data<int32_t>();
  float* k = keys.f32();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t e = hashed_expert(id[i], seed, G);
    for (int64_t g = 0; g < G; ++g) k[i * G + g] = g == e ? 0.f : -std::numeric_limits<float>::infinity();
  }
}

}  // namespace sy::ops::cpu
