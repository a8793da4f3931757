#include "runtime/parallel.h"

#include <cmath>
#include <cstring>

#include "ops/adamw.h"

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
void reduce_bucket(std::vector<Param*>& bucket, comm::Communicator& c, float scale, const char* what) {
  if (bucket.empty()) return;
  int64_t n = 0;
  for (Param* p : bucket) n += p->grad.numel();
  std::vector<float> flat(n);
  int64_t o = 0;
  for (Param* p : bucket) {
    std::memcpy(flat.data() + o, p->grad.f32(), p->grad.nbytes());
    o += p->grad.numel();
  }
  c.all_reduce_sum(flat.data(), n, what);
  o = 0;
  for (Param* p : bucket) {
    float* g = p->grad.f32();
    for (int64_t i = 0; i < p->grad.numel(); ++i) g[i] = flat[o + i] * scale;
    o += p->grad.numel();
  }
  bucket.clear();
}
}  // namespace

void all_reduce_gradients(ParamStore& params, ParallelContext& par, int64_t bucket_bytes) {
  if (par.world_size() == 1) return;
  const float scale = 1.f / static_cast<float>(par.world_size());
  std::vector<Param*> dense, experts;
  int64_t bytes = 0;
  for (Param* p : params.all()) {
    if (p->expert) {
      experts.push_back(p);
      continue;
    }
    dense.push_back(p);
    bytes += static_cast<int64_t>(p->grad.nbytes());
    if (bytes >= bucket_bytes) {
      reduce_bucket(dense, *par.world, scale, "dense gradients");
      bytes = 0;
    }
  }
  reduce_bucket(dense, *par.world, scale, "dense gradients");
  reduce_bucket(experts, *par.replicas, scale, "expert gradients");
}

int64_t global_param_count(const ParamStore& params, ParallelContext* par) {
  int64_t dense = 0;
  double experts = 0;  // exact in a double up to 2^53
  for (Param* p : params.all()) {
    if (p->expert)
      experts += static_cast<double>(p->value.numel());
    else
      dense += p->value.numel();
  }
  if (par && par->ep_size > 1) par->ep->all_reduce_sum(&experts, 1, "parameter count");
  return dense + static_cast<int64_t>(experts);
}

float clip_gradients(ParamStore& params, ParallelContext* par, float max_norm) {
  std::vector<Tensor*> dense, experts, all;
  for (Param* p : params.all()) {
    (p->expert ? experts : dense).push_back(&p->grad);
    all.push_back(&p->grad);
  }
  double expert_sq = ops::grad_sq_sum(experts);
  if (par && par->ep_size > 1) par->ep->all_reduce_sum(&expert_sq, 1, "gradient norm");
  const float norm = static_cast<float>(std::sqrt(ops::grad_sq_sum(dense) + expert_sq));
  ops::clip_to_norm(all, norm, max_norm);
  return norm;
}

}  // namespace sy
