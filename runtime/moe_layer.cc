#include "runtime/moe_layer.h"

#include "ops/elementwise.h"

namespace sy {

namespace {
int ep_size(ParallelContext* par) { return par ? par->ep_size : 1; }
int64_t hidden(const switchyard::MoeConfig& cfg, int64_t default_hidden) {
  return cfg.expert_hidden() > 0 ? cfg.expert_hidden() : default_hidden;
}
// Experts [e0, e1) held by this rank.
int64_t first_expert(const switchyard::MoeConfig& cfg, ParallelContext* par) {
  SY_CHECK(cfg.num_experts() % ep_size(par) == 0,
           "moe.num_experts = " << cfg.num_experts() << " over expert_parallel = " << ep_size(par));
  return (par ? par->shard() : 0) * (cfg.num_experts() / ep_size(par));
}
std::unique_ptr<ExpertExchange> exchange(Ctx& ctx, const switchyard::MoeConfig& cfg, int64_t C, ParallelContext* par) {
  if (ep_size(par) == 1) return nullptr;
  return std::make_unique<ExpertExchange>(ctx, *par->ep, cfg.num_experts(), C);
}
}  // namespace

MoeLayer::MoeLayer(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, const switchyard::MoeConfig& cfg,
                   int64_t default_hidden, Rng& rng, float std, float out_std, uint64_t seed, ParallelContext* par,
                   const FfnOptions& ffn)
    : ctx_(ctx),
      router_(ctx, ps, name, C, cfg, rng, std, seed, par),
      experts_(ctx, ps, name, cfg.num_experts(), C, hidden(cfg, default_hidden), first_expert(cfg, par),
               first_expert(cfg, par) + cfg.num_experts() / ep_size(par), rng, std, out_std, ffn),
      dispatcher_(ctx, exchange(ctx, cfg, C, par), name) {
  if (cfg.shared_expert())
    shared_ = std::make_unique<Mlp>(ctx, ps, name + ".shared", C, hidden(cfg, default_hidden), rng, std, out_std,
                                    ffn);
}

Tensor MoeLayer::forward(const Tensor& x) {
  const ops::Route& route = router_.forward(x);
  const Tensor buf = dispatcher_.dispatch(x, route);
  Tensor y = dispatcher_.combine(experts_.forward(buf, dispatcher_.expert_offsets()));
  if (shared_) ops::add_into(ctx_, y, shared_->forward(x));
  const int64_t N = x.dim(0), C = x.dim(1);
  // Per routed row: 2*C*H per GEMM, two GEMMs (GELU) or three (SwiGLU's gate, up, down).
  const double gemms = experts_.activation() == ops::FfnActivation::swiglu ? 3.0 : 2.0;
  flops_ = 2.0 * N * C * router_.num_groups() + gemms * 2.0 * buf.dim(0) * C * experts_.hidden() +
           (shared_ ? shared_->forward_flops() : 0);
  return y;
}

Tensor MoeLayer::backward(const Tensor& dy) {
  Tensor dweight;
  const Tensor dout = dispatcher_.combine_backward(dy, dweight);
  Tensor dx = dispatcher_.dispatch_backward(experts_.backward(dout));
  router_.backward(dweight, dx);
  if (shared_) ops::add_into(ctx_, dx, shared_->backward(dy));
  return dx;
}

}  // namespace sy
