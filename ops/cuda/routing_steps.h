// CUDA tokens_choose with the choice made by the caller's own kernel
// (routed attention's nearest centroid, ops/cuda/routed_attention.cu), then
// tokens_choose's slot sort, counts, offsets and its one copy back
// (ops/cuda/routing.cu): the same Route as tokens_choose on scores whose
// top-k the caller's kernel found.
#pragma once
#include <cstdint>
#include <functional>

#include "ops/routing.h"

namespace sy::ops::cuda {

// Fills, on ctx's stream, group and weight (N * k assignments; group with the
// runs' own numbering of TokensChooseParams::segment) and top (N: each item's
// first choice's weight, for SlotPriority::score).
using Chooser = std::function<void(int32_t* group, float* weight, float* top)>;

// N items, groups_per_run groups in each run of p.segment items (all N: one run).
void tokens_choose_by(Ctx& ctx, Route& r, int64_t N, int64_t groups_per_run, const TokensChooseParams& p,
                      const Chooser& choose);

}  // namespace sy::ops::cuda
