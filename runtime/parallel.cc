#include "runtime/parallel.h"

#include <cmath>

#include "ops/adamw.h"
#include "ops/elementwise.h"

namespace sy {

std::unique_ptr<ParallelContext> ParallelContext::create(std::unique_ptr<comm::Communicator> world, int ep,
                                                         double timeout_s) {
  if (ep < 1 || world->size() % ep != 0)
    throw ConfigError("parallel.expert_parallel = " + std::to_string(ep) + ": must divide the world size " +
                      std::to_string(world->size()));
  auto p = std::make_unique<ParallelContext>();
  world->set_timeout_s(timeout_s);
  const int r = world->rank();
  p->ep = world->split(r / ep, r);
  p->replicas = world->split(r % ep, r);
  p->ep->set_timeout_s(timeout_s);
  p->replicas->set_timeout_s(timeout_s);
  p->ep_size = ep;
  p->world = std::move(world);
  return p;
}

namespace {
// grad[begin, end) of an arena: summed over c, then scaled to the mean.
void reduce_range(Ctx& ctx, Tensor& grad, int64_t begin, int64_t end, comm::Communicator& c, float scale,
                  const char* what) {
  if (end <= begin) return;
  Tensor t = grad.rows(begin, end);
  c.all_reduce_sum(t, ctx.stream, what);
  ops::scale(ctx, t, scale);
}
}  // namespace

void all_reduce_gradients(Ctx& ctx, ParamStore& params, ParallelContext& par, int64_t bucket_bytes) {
  if (par.world_size() == 1) return;
  const float scale = 1.f / static_cast<float>(par.world_size());
  Tensor& dense = params.arena(ParamKind::dense).grad;
  int64_t begin = 0;
  for (Param* p : params.all()) {
    if (p->expert()) continue;
    const int64_t end = p->offset + p->value.numel();
    if ((end - begin) * static_cast<int64_t>(sizeof(float)) >= bucket_bytes) {
      reduce_range(ctx, dense, begin, end, *par.world, scale, "dense gradients");
      begin = end;
    }
  }
  reduce_range(ctx, dense, begin, params.arena(ParamKind::dense).numel(), *par.world, scale, "dense gradients");
  Tensor& experts = params.arena(ParamKind::expert).grad;
  reduce_range(ctx, experts, 0, params.arena(ParamKind::expert).numel(), *par.replicas, scale, "expert gradients");
}

float clip_gradients(Ctx& ctx, ParamStore& params, ParallelContext* par, float max_norm) {
  Tensor& dense = params.arena(ParamKind::dense).grad;
  Tensor& experts = params.arena(ParamKind::expert).grad;
  double expert_sq = ops::grad_sq_sum(ctx, {&experts});
  if (par && par->ep_size > 1) expert_sq = par->ep->all_reduce_sum(expert_sq, "gradient norm");
  const float norm = static_cast<float>(std::sqrt(ops::grad_sq_sum(ctx, {&dense}) + expert_sq));
  ops::clip_to_norm(ctx, {&dense, &experts}, norm, max_norm);
  return norm;
}

}  // namespace sy
