// The varlen attention kernels at routed causal attention's geometry, as a
// ladder from the dense kernel to the routed packing (bench_ops's rows
// varlen_ladder_*). Why: in the second H200 run routed causal attention's
// varlen kernels took 2.1 ms forward at n = 64k, k = 256, 8 heads of 64 -
// about 12x what their tiles would take at the dense kernel's FLOP rate -
// and a reading of the code found no cause. Each step below changes one
// thing, so the step where the time jumps names it:
//
//   dense      the dense causal kernel over S sequences of 2 m tokens
//              (ops::attention_*: a grid of (tiles, 1, S), no work list, no
//              member mask)
//   index      the varlen kernels over S segments of 2 m rows, every row a
//              query and a key: the same pairs, through the work list and
//              MemberMask by index (the element mask on every tile)
//   split      S segments of m keys then m queries (positions interleaved at
//              random, each side ascending): routed causal attention's
//              packing and mask exactly (all_flagged: spans, full tiles)
//   split_ok   the same without all_flagged: ok() pair by pair
//
// S = 2048 (256 clusters x 8 heads), m = 256 (64k tokens over 256
// clusters), head dim 64, bf16; forward, and forward + backward. Work: the
// pairs each step's mask allows (4 D FLOPs a pair forward, 14 D forward +
// backward). Timing only: the op tests hold these kernels to the CPU
// (backend_ops_test's varlen and routed cases). CUDA only.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/context.h"

namespace sy::bench {

struct VarlenLadderCase {
  std::string name, shape, note;
  double flops = 0;
  std::function<void()> run;
};

struct VarlenLadderShape {
  int64_t segments = 2048, side = 256, head_dim = 64;
};

// The cases, on inputs drawn on ctx's device that their run()s keep.
std::vector<VarlenLadderCase> varlen_ladder(Ctx& ctx, const VarlenLadderShape& s, uint64_t seed);

}  // namespace sy::bench
