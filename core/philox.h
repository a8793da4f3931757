// Philox-4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011): a counter-based generator. Four 32-bit outputs
// are a bijection of a 128-bit counter under a 64-bit key, so any element's
// draw can be computed on its own, in any order, on the host or in a kernel,
// and the same (key, counter) gives the same bits everywhere.
//
// Switchyard's keying (core/random.h): key = the run's seed; counter =
// (element index: 64 bits, step, stream), where the stream names the consumer
// (layer and purpose) and the element index is global (a token's index in the
// global batch), so a draw does not depend on how the batch is split over
// ranks, and a resumed run draws what an uninterrupted one would.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SY_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SY_HOST_DEVICE inline
#endif

namespace sy {

struct Philox4 {
  uint32_t v[4];
};

// One Philox-4x32-10 block: 10 rounds of two 32x32->64 multiplies with the
// Weyl-sequence key schedule (Random123's philox4x32, R = 10).
SY_HOST_DEVICE Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // multipliers
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // key increments (golden ratio, sqrt 3)
  for (int round = 0; round < 10; ++round) {
    if (round > 0) k0 += W0, k1 += W1;
    const uint64_t p0 = static_cast<uint64_t>(M0) * ctr.v[0];
    const uint64_t p1 = static_cast<uint64_t>(M1) * ctr.v[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// Where one draw comes from: the run's seed, the consumer's stream, the step,
// and the index of element 0 of the tensor being filled.
struct RandomKey {
  uint64_t seed = 0;
  uint32_t stream = 0;
  uint32_t step = 0;
  uint64_t offset = 0;
};

// The four words for element i of a RandomKey'd tensor.
SY_HOST_DEVICE Philox4 random_bits(const RandomKey& k, uint64_t i) {
  const uint64_t e = k.offset + i;
  return philox4x32_10(Philox4{{static_cast<uint32_t>(e), static_cast<uint32_t>(e >> 32), k.step, k.stream}},
                       static_cast<uint32_t>(k.seed), static_cast<uint32_t>(k.seed >> 32));
}

// A uniform float in (0, 1) from 32 bits: the top 23 bits plus half a step,
// (m + 0.5) * 2^-23, exact in float (m + 0.5 needs 24 significant bits) and
// never 0 or 1, so log is finite. (24 bits would round the top value to 1.)
SY_HOST_DEVICE float bits_to_uniform(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// A uniform integer in [0, n) from 64 bits (modulo; the bias is below n / 2^64).
SY_HOST_DEVICE uint64_t bits_below(uint32_t hi, uint32_t lo, uint64_t n) {
  return ((static_cast<uint64_t>(hi) << 32) | lo) % n;
}

// Named streams: one per consumer and purpose, so no two draw the same bits.
enum class RandomPurpose : uint32_t {
  data = 1, jitter = 2, router_noise = 3, gumbel = 4, sample = 5, token_select = 6, upcycle = 7
};
inline uint32_t random_stream(RandomPurpose p, int layer = 0) {
  return (static_cast<uint32_t>(layer) << 8) | static_cast<uint32_t>(p);
}

}  // namespace sy
