// MoeLayer: a mixture-of-experts FFN built on the routing core, as three parts
// (Megatron-Core's split): Router (gate, noise, policy, router losses and
// statistics: runtime/router.h) -> TokenDispatcher (dispatch, expert-parallel
// exchange, combine: runtime/token_dispatcher.h) -> GroupedExperts (the expert
// FFNs: runtime/grouped_experts.h), plus an optional shared expert.
//
//   y = combine(experts(dispatch(x, route(x))))  [+ shared_expert(x)]
//
// Tokens dropped over capacity get no expert output: with the block's residual
// they pass through unchanged. The router learns through the combine weights
// and through the router losses.
#pragma once
#include <memory>

#include "runtime/config.h"
#include "runtime/grouped_experts.h"
#include "runtime/layers.h"
#include "runtime/parallel.h"
#include "runtime/router.h"
#include "runtime/token_dispatcher.h"

namespace sy {

// Every expert's hidden width from moe.expert_hidden (empty, one value or one
// per expert; 0 = ffn_hidden) and the shared expert's width.
std::vector<int64_t> expert_hidden_sizes(const switchyard::MoeConfig& cfg, int64_t ffn_hidden);
int64_t shared_expert_hidden(const switchyard::MoeConfig& cfg, int64_t ffn_hidden);
// c_g in units of the dense FFN's cost per token: moe.expert_cost when set,
// else expert g's FLOPs per token (forward + backward: 12 d_model H_g, 18
// with SwiGLU) over the dense FFN's (12 or 18 d_model ffn_hidden), = H_g /
// ffn_hidden.
std::vector<float> expert_costs(const switchyard::MoeConfig& cfg, int64_t ffn_hidden);

class MoeLayer : public FeedForward {
 public:
  // With `par` (several ranks) the experts are sharded over par->ep and the
  // routing statistics are summed over par->world. `ffn`: the experts' (and
  // shared expert's) activation and biases (model.activation, model.bias).
  MoeLayer(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, const switchyard::MoeConfig& cfg,
           int64_t default_hidden, Rng& rng, float std, float out_std, uint64_t seed,
           ParallelContext* par = nullptr, const FfnOptions& ffn = {});
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  void release() override;
  void set_replay(bool r) override { dispatcher_.set_replay(r); }
  void set_training(bool t) override { router_.set_training(t); }
  void set_step(int64_t step) { router_.set_step(step); }
  void set_micro_batch(int m, int n) { router_.set_micro_batch(m, n); }
  // After a training step's micro-batches: the balancing bias moves (Router::end_step).
  void end_step() { router_.end_step(); }
  void set_sequence_length(int64_t T) override { router_.set_sequence_length(T); }
  Tensor decode(const Tensor& x, int64_t window, std::vector<int64_t>& counts) override;
  int64_t num_experts() const { return router_.num_groups(); }
  void set_token_ids(const Tensor& ids) override { router_.set_token_ids(ids); }
  void pool_statistics(bool on) override { router_.pool_statistics(on); }
  void set_padding(bool p) override { router_.set_padding(p); }
  double forward_flops() const override { return flops_; }
  // Forward FLOPs of the last forward's router (2 N C G).
  double router_flops() const override { return router_flops_; }
  const RoutingStats& stats() const { return router_.stats(); }
  const std::vector<float>& expert_cost() const { return router_.cost(); }
  // Sum of the router losses of the last forward (added to the training loss).
  double aux_loss() const { return router_.aux_loss(); }
  const Tensor& balance_bias() const { return router_.balance_bias(); }
  const ops::Route& route() const { return router_.route(); }
  // All-to-all bytes this rank sent in the last forward + backward.
  double bytes_sent() const { return dispatcher_.bytes_sent(); }

 private:
  Ctx& ctx_;
  Router router_;
  GroupedExperts experts_;
  TokenDispatcher dispatcher_;
  std::unique_ptr<Mlp> shared_;
  double flops_ = 0, router_flops_ = 0;
};

}  // namespace sy
