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
//
// Balanced assignment (moe.hash_assignment BALANCED; Roller et al. 2021):
// a table names each id's expert, expert(t) = table[t], made by
// balanced_hash_table from the ids' counts in the training data: ids in
// order of count, most frequent first (ties: the lower id), each to the
// expert with the least total count so far (ties: the lower expert). Then
// an expert's share of the tokens is about 1 / G where no single id holds
// more (a frequent id still takes its expert's whole share).
#pragma once
#include <cstdint>
#include <vector>

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

// keys (N, G) f32 out; ids (N) i32 token ids (>= 0). table: undefined (the
// hash of seed), or (V) i32 with each entry in [0, G) and every id < V
// (the caller's promise: device data is not read back to check it).
void hash_route_keys(Ctx& ctx, Tensor& keys, const Tensor& ids, uint64_t seed, const Tensor& table = Tensor());

// The balanced table of G experts for ids 0 .. V-1 of these counts (V =
// counts.size()), on the host.
std::vector<int32_t> balanced_hash_table(const std::vector<int64_t>& counts, int64_t G);

// The CPU reference (ops/cpu/hash_routing.cc) and the CUDA kernel
// (ops/cuda/hash_routing.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  void hash_route_keys(Ctx& ctx, Tensor& keys, const Tensor& ids, uint64_t seed, const Tensor& table);
)

}  // namespace sy::ops
