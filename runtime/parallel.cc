#include "runtime/parallel.h"

#include <cmath>

#include "ops/adamw.h"

namespace sy {

std::unique_ptr<ParallelContext> ParallelContext::create(std::unique_ptr<comm::Communicator> world, int ep,
                                                         double timeout_s) {
  if (ep < 1 || world->size() % ep != 0)
    throw ConfigError("parallel.expert_parallel = " + std::to_string(ep) + ": must divide the world size " +
                      std::to_string(world->size()) + " (a checkpoint resumes at another expert-parallel size: --set " +
                      "parallel.expert_parallel to a divisor)");
  auto p = std::make_unique<ParallelContext>();
  world->set_timeout_s(timeout_s);
  const int r = world->rank();
  p->ep = world->split(r / ep, r);
  p->replicas = world->split(r % ep, r);
  p->grads = world->split(0, r);
  p->ep->set_timeout_s(timeout_s);
  p->replicas->set_timeout_s(timeout_s);
  p->grads->set_timeout_s(timeout_s);
  p->ep_size = ep;
  p->world = std::move(world);
  return p;
}

size_t ParallelContext::host_staging_bytes() const {
  size_t b = 0;
  for (const comm::Communicator* c : {world.get(), ep.get(), replicas.get(), grads.get()})
    if (c) b += c->host_staging_bytes();
  return b;
}

int64_t global_param_count(const ParamStore& params, ParallelContext* par) {
  const int64_t dense = params.numel(ParamKind::dense);
  double experts = static_cast<double>(params.numel(ParamKind::expert));  // exact in a double up to 2^53
  if (par && par->ep_size > 1) experts = par->ep->all_reduce_sum(experts, "parameter count");
  return dense + static_cast<int64_t>(experts);
}

float gradient_norm(Ctx& ctx, ParamStore& params, ParallelContext* par, bool scattered) {
  SY_CHECK(!params.grads_pending(), "gradient norm: some expert gradients are unwritten (zero_grad without a backward)");
  // A kind's squares: of its whole arena, or (scattered over its moments'
  // parts) of this rank's part, summed over the part's group.
  auto squares = [&](ParamKind k) {
    const Tensor& g = params.arena(k).grad;
    if (!scattered || params.moment_parts(k) == 1) return ops::grad_sq_sum(ctx, {&g});
    const ElementRange own = params.moment_range(k);
    const Tensor mine = g.rows(own.begin, own.end);
    comm::Communicator& group = k == ParamKind::dense ? *par->world : *par->replicas;
    return group.all_reduce_sum(ops::grad_sq_sum(ctx, {&mine}), "gradient norm");
  };
  double expert_sq = squares(ParamKind::expert);
  if (par && par->ep_size > 1) expert_sq = par->ep->all_reduce_sum(expert_sq, "gradient norm");
  return static_cast<float>(std::sqrt(squares(ParamKind::dense) + expert_sq));
}

}  // namespace sy
