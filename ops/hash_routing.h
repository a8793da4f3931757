// Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models"):
// a token goes to the expert a fixed hash of its id names, whatever its
// hidden state; the learned-router baseline that routing studies compare
// against. The expert of token id t under seed s:
//
//   expert(t) = mix(s + (t + 1) * 0x9E3779B97F4A7C15) mod G
//
// with mix SplitMix64's finaliser (Steele et al. 2014): expert(t) is draw
// t + 1 of core/rng.h's Rng(s), mod G (the same output function, here
// callable on the device, which Rng is not; tests/hash_routing_test.cc
// checks the two agree). Each id an
// independent, uniform draw, so an expert gets about V / G of the
// vocabulary, not of the tokens (a frequent id takes its expert's whole
// share of them). Integer arithmetic only: both backends give the same
// expert. The router selects by the keys hash_route_keys writes,
//
//   keys[i, g] = 0 where g = expert(ids[i]), -inf elsewhere,
//
// as TokensChooseParams::selection_keys: its top-1 is the hashed expert,
// its combine weight the router's probability (1 with renormalize).
#pragma once
#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"
#include "ops/backend.h"
#include "ops/cuda/host_device.h"

namespace sy::ops {

SY_HD inline int64_t hashed_expert(int32_t id, uint64_t seed, int64_t G) {
  uint64_t z = seed + (static_cast<uint64_t>(static_cast<uint32_t>(id)) + 1) * Rng::kGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<int64_t>(z % static_cast<uint64_t>(G));
}

// keys (N, G) f32 out; ids (N) i32 token ids (>= 0).
void hash_route_keys(Ctx& ctx, Tensor& keys, const Tensor& ids, uint64_t seed);

// The CPU reference (ops/cpu/hash_routing.cc) and the CUDA kernel
// (ops/cuda/hash_routing.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  void hash_route_keys(Ctx& ctx, Tensor& keys, const Tensor& ids, uint64_t seed);
)

}  // namespace sy::ops
