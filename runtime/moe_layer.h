// MoeLayer: a mixture-of-experts FFN built on the routing core.
//
//   logits = x_r Wg [+ eps]    (N, G), fp32; x_r = x * U(1-j, 1+j) when jittering,
//                              eps ~ N(0, router_noise^2) (noisy gating), training only
//   route  = tokens_choose(score_fn(logits)) or groups_choose (expert choice);
//            with router_noise_kind GUMBEL, tokens choose by logits + Gumbel(0,
//            router_noise) instead (training only; the weights stay clean)
//   y      = combine(experts(dispatch(x)))  [+ shared_expert(x)]
//
// Tokens dropped over capacity get no expert output: with the block's residual
// they pass through unchanged. The router learns through the combine weights
// (dweight -> dprobs -> dlogits -> Wg and x) and through the router losses,
// whose gradients are added in backward. The load-balance loss covers every
// data-parallel rank's tokens, or with moe.load_balance_tokens > 0 each run of
// that many of this rank's tokens (per sequence) and their mean.
#pragma once
#include <memory>
#include <vector>

#include "ops/routing.h"
#include "runtime/config.h"
#include "runtime/expert_exchange.h"
#include "runtime/layers.h"
#include "runtime/parallel.h"

namespace sy {

// What a MoE layer reports about its last forward (metrics). Load, dropped and
// entropy cover every data-parallel rank's tokens, as does the batch-wide
// load-balance loss; the grouped one and the z- and budget losses are over
// this rank's tokens.
struct MoeStats {
  std::vector<double> load;  // fraction of assignments per expert (before capacity)
  double max_over_mean = 0, cv = 0, dropped = 0, entropy = 0;
  double lb_loss = 0, z_loss = 0, budget_loss = 0, expected_cost = 0;
  int64_t capacity = 0;
  double comm_s = 0;  // all-to-all seconds in the last forward + backward
  double bytes_sent = 0;
};

class MoeLayer : public FeedForward {
 public:
  // With `par` (several ranks) the experts are sharded over par->ep and the
  // load-balance statistics are summed over par->world.
  MoeLayer(ParamStore& ps, const std::string& name, int64_t C, const switchyard::MoeConfig& cfg,
           int64_t default_hidden, Rng& rng, float std, float out_std, uint64_t seed,
           ParallelContext* par = nullptr);
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  void set_training(bool t) override { training_ = t; }
  double forward_flops() const override { return flops_; }
  const MoeStats& stats() const { return stats_; }
  // Sum of the router losses of the last forward (added to the training loss).
  double aux_loss() const { return stats_.lb_loss + stats_.z_loss + stats_.budget_loss; }
  const std::vector<float>& balance_bias() const { return bias_; }
  const ops::Route& route() const { return route_; }

 private:
  switchyard::MoeConfig cfg_;
  int64_t C_, G_, H_, El_;  // El_: experts held by this rank
  ParallelContext* par_;
  std::unique_ptr<ExpertExchange> exchange_;  // expert parallelism, else null
  std::string name_;
  Param *wg_, *w1_, *b1_, *w2_, *b2_;
  std::unique_ptr<Mlp> shared_;
  std::vector<float> bias_;  // selection bias (auxiliary-loss-free balancing)
  std::vector<float> cost_;
  Rng rng_;
  bool training_ = true;
  // saved for backward
  Tensor x_, xr_, buf_, pre_, out_;
  Tensor ebuf_;  // expert-major rows this rank's experts processed (ebuf_ = buf_ on one rank)
  std::vector<float> noise_;  // jitter factors (N*C), empty when not jittering
  std::vector<float> logits_, probs_;
  std::vector<float> aux_dprobs_, aux_dlogits_;  // router losses' gradients (N, G), from forward
  ops::Route route_;
  MoeStats stats_;
  double flops_ = 0;
};

}  // namespace sy
