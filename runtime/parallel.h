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
  // The world again, for the dense gradient all-reduce that runs on the
  // reducer's thread during backward (collectives of one group must not
  // interleave between threads, so it gets its own).
  std::unique_ptr<comm::Communicator> grads;
  int ep_size = 1;
  // parallel.dedup_dispatch: each token's row crosses once per rank
  // (runtime/expert_exchange.h).
  bool dedup_dispatch = false;

  // Checks world % ep (ConfigError naming parallel.expert_parallel otherwise).
  static std::unique_ptr<ParallelContext> create(std::unique_ptr<comm::Communicator> world, int ep,
                                                 double timeout_s);
  int rank() const { return world->rank(); }
  int world_size() const { return world->size(); }
  int shard() const { return ep->rank(); }
  // Host memory the four communicators keep for staging device tensors.
  size_t host_staging_bytes() const;
};

// Parameters of the whole model: the dense ones once and every expert's,
// summed over the expert-parallel group (which holds each shard once). A
// collective over the group when par is set.
int64_t global_param_count(const ParamStore& params, ParallelContext* par);

// The global gradient norm over the whole model, for clipping: under
// expert parallelism a rank holds one expert shard, so the experts' squares
// are summed over the expert-parallel group (which holds every shard once)
// before the norm is taken; every rank gets the same norm, so applies the
// same clip factor (ops::clip_scale; the optimizer applies it as it reads
// the gradients: AdamWConfig::grad_scale). par may be null (one rank).
// scattered (parallel.reduce_scatter_grads): where a kind's moments are
// sharded, a rank holds the reduced gradients of its own part only, so
// each part's squares are summed over the part's group first.
float gradient_norm(Ctx& ctx, ParamStore& params, ParallelContext* par, bool scattered = false);

}  // namespace sy
