// Group-limited routing (DeepSeek-V2's device-limited and DeepSeek-V3's
// node-limited routing): the G experts are split into R routing groups of
// M = G / R consecutive experts, and a token may choose only among the
// experts of its `kept` best groups, so its k assignments reach at most
// `kept` groups. With expert parallelism over R ranks a group is one rank's
// experts (ExpertExchange places experts [d M, (d + 1) M) on rank d): each
// token's rows then go to at most `kept` ranks.
//
// For item i, with key the scores the top-k ranks (the probabilities, or the
// selection keys where noise draws the choice) and b the selection bias:
//
//   s_g      = key[i, g] + b[g]                                (as the top-k adds it)
//   S_j      = sum of group j's top_n largest s_g, largest first
//   J_i      = the kept groups of largest S_j (ties: the lower j)
//   out[i, g] = key[i, g] where g / M is in J_i, else -inf
//
// out then takes key's place as the selection keys of the top-k
// (TokensChooseParams::selection_keys), which adds b again and picks only
// among J_i's experts: k <= kept M keeps every pick in J_i where the kept
// experts' s_g are finite (a NaN one ranks as -inf, tied with the excluded,
// and a NaN row's step is skipped anyway). The combine weights stay the
// probabilities. A NaN s_g ranks as -inf (nan_last, as the top-k ranks it),
// and a group score is a plain float sum in that order, so both backends
// compute it bit for bit. DeepSeek-V3 sums each group's two best
// (top_n = 2); V2's device-limited routing takes the best (top_n = 1).
// The limit narrows where a token's rows go only where k > kept: a top-2
// within 2 groups reaches 2 groups at most, as an unlimited top-2 does
// (it still changes which experts are chosen).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

struct GroupLimit {
  int64_t groups = 0;  // R, dividing G; 0: no limit
  int64_t kept = 0;    // groups an item may use, [1, R]
  int64_t top_n = 2;   // experts whose scores make a group's, [1, min(kMaxTopN, M)]
  static constexpr int64_t kMaxTopN = 8;
  bool on() const { return groups > 0; }
};

// key, out (N, G) f32; bias (G) f32 or null.
void limit_groups(Ctx& ctx, Tensor& out, const Tensor& key, const Tensor* bias, const GroupLimit& g);

// The CPU reference (ops/cpu/group_limit.cc) and the CUDA kernels
// (ops/cuda/group_limit.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  void limit_groups(Ctx& ctx, Tensor& out, const Tensor& key, const Tensor* bias, const GroupLimit& g);
)

}  // namespace sy::ops
