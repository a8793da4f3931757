// The process layout of a run (Megatron / DeepSpeed's): `world` holds every
// rank, each a data-parallel replica of the dense parameters; ranks
// [g*ep, (g+1)*ep) form expert-parallel group g, in which rank e holds expert
// shard e; the ranks holding the same shard (rank % ep equal) form that
// shard's replica group, over which its gradients are reduced.
#pragma once
#include <memory>

#include "comm/communicator.h"
#include "runtime/params.h"

namespace sy {

struct ParallelContext {
  std::unique_ptr<comm::Communicator> world;
  std::unique_ptr<comm::Communicator> ep;         // this rank's expert-parallel group
  std::unique_ptr<comm::Communicator> replicas;   // ranks holding the same expert shard
  int ep_size = 1;

  // Checks world % ep (ConfigError naming parallel.expert_parallel otherwise).
  static std::unique_ptr<ParallelContext> create(std::unique_ptr<comm::Communicator> world, int ep,
                                                 double timeout_s);
  int rank() const { return world->rank(); }
  int world_size() const { return world->size(); }
  int shard() const { return ep->rank(); }
};

// Parameters of the whole model: the dense ones once and every expert's,
// summed over the expert-parallel group (which holds each shard once). A
// collective over the group when par is set.
int64_t global_param_count(const ParamStore& params, ParallelContext* par);

// Averages gradients over data-parallel replicas: dense parameters over the
// world, expert parameters over their shard's replicas; both divided by the
// world size (each rank's loss is a mean over its own tokens). Dense
// gradients travel in buckets of about bucket_bytes.
void all_reduce_gradients(ParamStore& params, ParallelContext& par, int64_t bucket_bytes);

// Global-norm clipping over the whole model: under expert parallelism a rank
// holds one expert shard, so the experts' squares are summed over the
// expert-parallel group (which holds every shard once) before the norm is
// taken; every rank then applies the same scale. par may be null (one rank).
float clip_gradients(ParamStore& params, ParallelContext* par, float max_norm);

}  // namespace sy
