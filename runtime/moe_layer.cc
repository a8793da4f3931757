#include "runtime/moe_layer.h"

#include "ops/elementwise.h"

namespace sy {

namespace {
int ep_size(ParallelContext* par) { return par ? par->ep_size : 1; }
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

std::vector<int64_t> expert_hidden_sizes(const switchyard::MoeConfig& cfg, int64_t ffn_hidden) {
  const int64_t G = cfg.num_experts(), n = cfg.expert_hidden_size();
  SY_CHECK(n <= 1 || n == G, "moe.expert_hidden: " << n << " values for " << G << " experts");
  std::vector<int64_t> h(G, ffn_hidden);
  for (int64_t g = 0; g < G && n > 0; ++g) {
    const int64_t v = cfg.expert_hidden(n == 1 ? 0 : static_cast<int>(g));
    if (v > 0) h[g] = v;
  }
  return h;
}

int64_t shared_expert_hidden(const switchyard::MoeConfig& cfg, int64_t ffn_hidden) {
  return cfg.expert_hidden_size() == 1 && cfg.expert_hidden(0) > 0 ? cfg.expert_hidden(0) : ffn_hidden;
}

std::vector<float> expert_costs(const switchyard::MoeConfig& cfg, int64_t ffn_hidden) {
  if (cfg.expert_cost_size() > 0) return {cfg.expert_cost().begin(), cfg.expert_cost().end()};
  std::vector<float> c;
  for (int64_t h : expert_hidden_sizes(cfg, ffn_hidden))
    c.push_back(static_cast<float>((12.0 * h) / (12.0 * ffn_hidden)));  // the d_model factor cancels
  return c;
}

MoeLayer::MoeLayer(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, const switchyard::MoeConfig& cfg,
                   int64_t default_hidden, Rng& rng, float std, float out_std, uint64_t seed, ParallelContext* par,
                   const FfnOptions& ffn)
    : ctx_(ctx),
      router_(ctx, ps, name, C, cfg, expert_costs(cfg, default_hidden), rng, std, seed, par),
      experts_(ctx, ps, name, expert_hidden_sizes(cfg, default_hidden), C, first_expert(cfg, par),
               first_expert(cfg, par) + cfg.num_experts() / ep_size(par), rng, std, out_std, ffn),
      dispatcher_(ctx, exchange(ctx, cfg, C, par), name, par && par->dedup_dispatch) {
  if (cfg.shared_expert())
    shared_ = std::make_unique<Mlp>(ctx, ps, name + ".shared", C, shared_expert_hidden(cfg, default_hidden), rng,
                                    std, out_std, ffn);
}

Tensor MoeLayer::forward(const Tensor& x) {
  const ops::Route& route = router_.forward(x);
  const Tensor buf = dispatcher_.dispatch(x, route, experts_.operand_dtype());
  Tensor y = dispatcher_.combine(experts_.forward(buf, dispatcher_.expert_offsets()));
  if (shared_) ops::add_into(ctx_, y, shared_->forward(x));
  const int64_t N = x.dim(0), C = x.dim(1);
  router_flops_ = 2.0 * N * C * router_.num_groups();
  // A padded route's buffer holds G C rows, padding included; the model's
  // FLOPs are its kept rows'. moe.pad_to_largest: each expert's counted rows
  // at its own width. moe.padded: its N k assignments' (drops are not read
  // back and count as served), the padded GEMMs' FLOPs scaled by kept /
  // (G C), exact for experts of one width.
  double expert_flops = experts_.forward_flops();
  const std::vector<int32_t>& counted = router_.counts_before_padding();
  if (route.padded && !counted.empty() && static_cast<int64_t>(counted.size()) == experts_.layout().groups()) {
    expert_flops = 0;
    for (size_t g = 0; g < counted.size(); ++g) expert_flops += counted[g] * experts_.row_flops(static_cast<int64_t>(g));
  } else if (route.padded && route.rows() > 0) {
    const int64_t kept = route.assigned - std::max<int64_t>(route.dropped, 0) - route.budget_dropped;
    expert_flops *= static_cast<double>(kept) / route.rows();
  }
  flops_ = router_flops_ + expert_flops + (shared_ ? shared_->forward_flops() : 0);
  return y;
}

Tensor MoeLayer::decode(const Tensor& x, int64_t window, std::vector<int64_t>& counts) {
  struct Decoding {  // the router decodes for this forward only, whatever it throws
    Router& r;
    ~Decoding() { r.set_decode(0, nullptr); }
  } decoding{router_};
  router_.set_decode(window, &counts);
  return forward(x);
}

void MoeLayer::release() {
  router_.release();
  dispatcher_.release();
  experts_.release();
  if (shared_) shared_->release();
}

Tensor MoeLayer::backward(const Tensor& dy) {
  Tensor dweight;
  // (bf16 mode: dout rounded as combine_backward writes it, as dispatch rounds buf)
  const Tensor dout = dispatcher_.combine_backward(dy, dweight, experts_.operand_dtype());
  Tensor dx = dispatcher_.dispatch_backward(experts_.backward(dout));
  router_.backward(dweight, dx);
  if (shared_) ops::add_into(ctx_, dx, shared_->backward(dy));
  return dx;
}

}  // namespace sy
