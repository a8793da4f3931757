// Group-limited routing's steps as the CUDA kernels take them
// (ops/group_limit.h): a group's score from one thread, then each expert's
// group ranked among the row's groups by one thread, so a row needs no
// sort. Host-compiled too: tests/group_limit_test.cc replays them against
// the CPU reference (ops/cpu/group_limit.cc, which sorts).
#pragma once
#include <cstdint>

#include "ops/cuda/host_device.h"
#include "ops/group_limit.h"

namespace sy::ops {

// Group j's score in one row: the sum of its top_n largest
// s_g = nan_last(key[g] + bias[g]), largest first (ties: the lower g).
// top_n repeated passes over the group's M experts, each skipping those
// already taken.
SY_HD inline float group_score(const float* key, const float* bias, int64_t j, int64_t M, int64_t top_n) {
  int64_t taken[GroupLimit::kMaxTopN];
  float sum = 0.f;
  for (int64_t t = 0; t < top_n; ++t) {
    int64_t best = -1;
    float best_s = 0.f;
    for (int64_t g = j * M; g < (j + 1) * M; ++g) {
      bool used = false;
      for (int64_t u = 0; u < t; ++u) used = used || taken[u] == g;
      if (used) continue;
      const float s = nan_last(key[g] + (bias ? bias[g] : 0.f));
      if (best < 0 || s > best_s) best = g, best_s = s;
    }
    taken[t] = best;
    sum += best_s;
  }
  return sum;
}

// Whether group j is among the row's `kept` best of R group scores
// (nan_last; ties: the lower index): fewer than kept groups rank above it.
SY_HD inline bool group_kept(const float* scores, int64_t R, int64_t j, int64_t kept) {
  const float s = nan_last(scores[j]);
  int64_t above = 0;
  for (int64_t o = 0; o < R; ++o) {
    const float so = nan_last(scores[o]);
    above += so > s || (so == s && o < j);
  }
  return above < kept;
}

}  // namespace sy::ops
