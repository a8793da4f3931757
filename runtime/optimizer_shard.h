// ZeRO stage 1 (parallel.shard_optimizer; Rajbhandari et al. 2020, "ZeRO:
// Memory Optimizations Toward Training Trillion Parameter Models";
// Megatron-LM's distributed optimizer): AdamW's moments split over the
// ranks that hold the same parameters.
//
//   the dense arena's group:   every rank (ParallelContext::world)
//   the expert arena's group:  the replicas of this rank's expert shard
//   rank i of a group of n keeps m and v of its arena's elements
//   [N i / n, N (i + 1) / n), each end rounded down to a multiple of 16
//   (ParamStore::moment_part)
//
// A step: the gradients are all-reduced whole, as without
// (runtime/grad_reducer.h); the norm and clip factor come from them, as
// without (parallel.reduce_scatter_grads: each rank receives the sums of
// its own part only, a reduce-scatter, and the norm is the sum of the
// parts' squares over the group: another order of the same sums); each
// rank runs AdamW over its own elements (owned_update), each element with
// the arithmetic of the whole update (ops/adamw.h is elementwise), so the
// same bits; then every rank's updated values reach
// the rest of its group (share_values: one all-gather of the parts over the
// arena, Communicator::all_gather_v; until 2026-12-06 a broadcast a part,
// one after the other, 1.6-1.9x its time at 4-64 MiB on 2 CPU ranks,
// docs/PERF.md). Checkpoints hold whole moments: gather_moments brings a
// tensor's to its group's rank 0, the rank that writes it
// (runtime/checkpoint.h), through the same all-gather, and moment_piece
// says which part of a loaded tensor this rank keeps.
#pragma once
#include <deque>
#include <vector>

#include "ops/adamw.h"
#include "runtime/parallel.h"
#include "runtime/params.h"

namespace sy {

// Shards the moments of `params` over the layout's groups (before finalize):
// the dense arena over the world, the expert arena over the replicas. Does
// nothing for a group of one rank.
void shard_moments(ParamStore& params, const ParallelContext& par);

// The group a kind's moments are sharded over.
comm::Communicator& moment_group(ParallelContext& par, ParamKind k);

// AdamW's parameters for the elements whose moments this rank keeps (every
// element where they are not sharded): each Param's part of moment_range, as
// views of the arenas kept in `views` (which must outlive the list).
std::vector<ops::AdamWParam> owned_update(ParamStore& params, std::deque<Tensor>& views);

// After owned_update's step: each rank's values to the rest of its group
// (one all-gather a group), and the bf16 shadows of the values that arrived. Collective over both
// groups (every rank calls it).
void share_values(Ctx& ctx, ParamStore& params, ParallelContext& par);

// Kind k's moment (m, or v where `second`) over arena elements r, gathered
// to rank 0 of its group: a host tensor (r.size()) there, undefined on the
// others. Collective over the group (its ranks call it with the same r).
Tensor gather_moments(Ctx& ctx, const ParamStore& params, ParallelContext& par, ParamKind k, ElementRange r,
                      bool second);

// The part of a tensor at kind k's arena elements r whose moments this rank
// keeps: the tensor's elements [src, src + n) are the moment arenas' [dst,
// dst + n). n is 0 where it keeps none.
struct MomentPiece {
  int64_t src = 0, dst = 0, n = 0;
};
MomentPiece moment_piece(const ParamStore& params, ParamKind k, ElementRange r);

// Arena range r's pieces in the group's parts, in rank order (the parts
// are contiguous and ordered, so r's consecutive pieces, together all of
// it): the parts all_gather_v and reduce_scatter_sum_v take over r.
std::vector<int64_t> moment_pieces(const ParamStore& params, ParamKind k, ElementRange r);
// The elements of arena range r whose moments this rank keeps (maybe none).
ElementRange owned_elements(const ParamStore& params, ParamKind k, ElementRange r);

// Arena elements of a Param (its whole tensor, or an expert Param's local
// row i: one expert's piece).
ElementRange param_elements(const Param& p);
ElementRange row_elements(const Param& p, int64_t i);

}  // namespace sy
