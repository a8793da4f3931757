// Router: the gate of a MoE layer (Megatron-Core's split: Router ->
// TokenDispatcher -> GroupedExperts; runtime/moe_layer.h puts them together).
//
//   logits = x_r Wg [+ eps]    (N, G), fp32; x_r = x * U(1-j, 1+j) when jittering,
//                              eps ~ N(0, router_noise^2) (noisy gating), training only
//   probs  = softmax or sigmoid(logits)
//   route  = tokens_choose(probs) (with the scores: tokens_choose_logits, one
//            kernel on a GPU) or groups_choose (expert choice); with
//            router_noise_kind GUMBEL, tokens choose by logits + Gumbel(0,
//            router_noise) instead (training only; the weights stay clean);
//            with moe.sinkhorn_iters by the logits (or those Gumbel keys)
//            plus the Sinkhorn offset that balances the batch over the
//            experts (training; evaluation by the logits plus a running mean
//            of the offsets with moe.sinkhorn_at_eval, else by the logits;
//            ops/sinkhorn.h); with router HASH by keys naming each token
//            id's hashed expert (ops/hash_routing.h)
//
//   route  = apply_budget(route) when moe.budget_mode is HARD or HARD_CAUSAL:
//            the kept assignments' cost c_g (expert_costs(): FLOPs per token
//            over the dense FFN's) stays within budget * N on this rank's N
//            tokens (the causal variant per sequence, by position)
//
// It also computes the routing statistics and the router losses of each
// forward (load balance, z-loss, compute budget), whose gradients backward
// adds to the combine weights' own: dweight -> dprobs -> dlogits -> Wg and x
// (the straight-through path of the routing core). Where nothing but these
// reads the probabilities (keeps_probs() false: no expert choice, budget,
// grouped balance or sigmoid scores) they are not kept: the statistics and backward recompute
// them from the logits (ops::routing_sums_logits, ops::router_backward). Statistics, the
// batch-wide load-balance loss and the realised-cost budget loss cover every
// data-parallel rank's tokens (all-reduced routing sums); the grouped
// load-balance loss, the z-loss and the expected-cost budget loss are over
// this rank's, and the values reported for them are their mean over ranks
// (summed in the same all-reduce).
//
// Nothing is read back in forward: the sums, the losses' values and the
// balance bias's update stay on the device, and stats() (and aux_loss())
// copy them to the host on the first call after a forward. A GPU step thus
// waits for no router (with moe.padded not for the route either, ops/routing.h).
#pragma once
#include <string>
#include <vector>

#include "ops/router_loss.h"
#include "ops/routing.h"
#include "runtime/config.h"
#include "runtime/params.h"
#include "runtime/parallel.h"

namespace sy {

// What a router reports about its last forward (metrics).
struct RoutingStats {
  std::vector<double> load;  // share of assignments per expert (before capacity), every rank's tokens
  double max_over_mean = 0, cv = 0;
  double dropped = 0;   // share of used assignments dropped over capacity
  double unserved = 0;  // share of tokens with no kept assignment (no expert at all)
  double entropy = 0;   // mean router entropy per token
  double lb_loss = 0, z_loss = 0, budget_loss = 0;
  // Cost per token in units of the dense FFN's, every rank's tokens
  // (ops/router_loss.h, RoutingTotals): realised (kept assignments),
  // before the hard budget's drops, and expected from the probabilities.
  double realized_cost = 0, cost_before_budget = 0, expected_cost = 0;
  double budget = 0;           // B (moe.budget, or derived from budget.target)
  bool budget_applies = false; // a budget loss (moe.budget_coef > 0) or a hard budget acts on B
  double budget_dropped = 0;   // share of used assignments dropped by the hard budget
  int64_t capacity = 0;
  // What the shares above divide: items (tokens) and used assignments, every
  // rank's, over the pooled forwards (0 where none routed a token). A mean
  // over several forwards weights each by them.
  double items = 0, assigned = 0;
};

class Router {
 public:
  // par (several ranks) makes the statistics global; seed keys the noise
  // draws (ops/random.h): jitter, Gaussian and Gumbel noise of token i at
  // step s are a function of (seed, s, i's index in the global batch), so
  // they do not depend on the number of ranks and a resumed run redraws them.
  // cost: c_g per expert (expert_costs()).
  Router(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, const switchyard::MoeConfig& cfg,
         std::vector<float> cost, Rng& rng, float std, uint64_t seed, ParallelContext* par);
  // Routes x (N, C); saves what backward needs.
  const ops::Route& forward(const Tensor& x);
  // dweight (N*k): the combine weights' gradient. Accumulates the router's
  // input gradient into dx (N, C) and Wg's gradient into the ParamStore.
  void backward(const Tensor& dweight, Tensor& dx);
  // Drops what backward reads but the route (runtime/layers.h). A forward
  // run again records the same load for the balancing bias (a row per
  // micro-batch, written, not added): nothing counts twice.
  void release();
  void set_training(bool t) { training_ = t; }
  // The training step the next forward's noise belongs to. A new step (or a
  // step run again) starts with no load recorded for the balancing bias.
  void set_step(int64_t step) {
    step_ = static_cast<uint32_t>(step);
    load_recorded_ = h_recorded_ = false;
  }
  // After a step's micro-batches (Transformer::end_step): the balancing bias
  // moves once, on the load of all of them (moe.bias_balance_rate), or
  // toward the mean of their Sinkhorn offsets (moe.sinkhorn_at_eval).
  void end_step();
  // Micro-batch m of n of this rank's slice (train.micro_batches): its noise
  // draws are keyed by its tokens' places in the global batch.
  void set_micro_batch(int m, int n) { micro_ = m, micros_ = n; }
  // Tokens per sequence of the next forward's rows (HARD_CAUSAL's runs; 0:
  // the whole batch is one run).
  void set_sequence_length(int64_t T) { seq_len_ = T; }
  // The rows' token ids (N) i32 (moe.router HASH routes by them; kept, so a
  // replayed forward routes the same).
  void set_token_ids(const Tensor& ids) { ids_ = ids; }
  // Decoding (Transformer::decode; evaluation on the CPU): the next forward
  // routes the token at the next position of a window of `window`
  // positions, and drops the choices whose expert the window's earlier
  // tokens have filled (moe.capacity_factor_eval's capacity for a forward
  // over the whole window: slots by position or token by token, which
  // causal() admits). counts (G): each expert's assignments at the window's
  // positions so far (the cache's), which the forward adds its own to.
  // window 0 (counts null): decoding ends.
  void set_decode(int64_t window, std::vector<int64_t>* counts);
  // Pooling on: the forwards from here are the parts of one (their routing
  // sums, and so stats(), over every part's rows; the losses' values their
  // mean over the parts), until it is set off; the next forward after that
  // starts afresh. Each pooled forward's sums stay on the device until
  // stats() reads them.
  void pool_statistics(bool on);
  // The next forwards' rows are padding (FeedForward::set_padding): this
  // rank adds nothing to their sums and losses' values, which are still
  // all-reduced (the other ranks' calls pair with this one).
  void set_padding(bool p) { padding_ = p; }
  const std::vector<float>& cost() const { return cost_; }
  const ops::Route& route() const { return route_; }
  // Kept rows per expert of the last forward's route before moe.pad_to_largest
  // padded it (empty when it did not).
  const std::vector<int32_t>& counts_before_padding() const { return counts_before_padding_; }
  // The last forward's statistics and losses (read from the device on the
  // first call after it); in training with micro-batches, the step's so far
  // (the routing sums of its micro-batches, the losses' values their mean).
  const RoutingStats& stats() const;
  double aux_loss() const {
    const RoutingStats& s = stats();
    return s.lb_loss + s.z_loss + s.budget_loss;
  }
  const Tensor& balance_bias() const { return bias_; }
  bool renormalized() const;
  // Whether forward keeps the (N, G) probabilities (runtime/router.cc says when).
  bool keeps_probs() const;
  int64_t num_groups() const { return G_; }

 private:
  void losses_and_stats(int64_t N);
  void drop_as_the_window_would();  // set_decode
  // The Sinkhorn offsets (G) of the selection keys; with sinkhorn_at_eval
  // records this micro-batch's evaluation offsets (of `clean`, the
  // noiseless logits, where given) for end_step.
  Tensor sinkhorn_offsets(const Tensor& keys, const Tensor& clean);

  Ctx& ctx_;
  switchyard::MoeConfig cfg_;
  std::string name_;
  int64_t C_, G_;
  ParallelContext* par_;
  Param* wg_;
  Tensor bias_;  // (G) selection bias: auxiliary-loss-free balancing, or Sinkhorn's mean offsets
  Tensor clean_sums_;  // this rank's routing sums of the noiseless choice (noisy training with the bias only)
  std::vector<float> cost_;
  uint64_t seed_;
  uint32_t step_ = 0;
  int micro_ = 0, micros_ = 1;  // set_micro_batch
  // The chosen counts of the step's training forwards so far, row m micro-batch
  // m's (all-reduced): the balancing bias's load at end_step.
  Tensor step_load_;            // (micros_, G) f64, zeroed at the step's first training forward
  bool load_recorded_ = false;  // step_load_ holds this step's load
  Tensor ids_;  // set_token_ids
  Tensor hash_table_;  // (V) i32: moe.hash_table (BALANCED), else undefined
  Tensor step_h_;               // (micros_, G) f32: each micro-batch's Sinkhorn offsets (moe.sinkhorn_at_eval)
  bool h_recorded_ = false;
  int64_t seq_len_ = 0;
  bool training_ = true;
  int64_t decode_window_ = 0;                     // set_decode: > 0 while decoding
  std::vector<int64_t>* decode_counts_ = nullptr;  // set_decode
  // saved for backward
  Tensor xr_, noise_;            // router input (jittered), jitter factors (undefined when not jittering)
  Tensor logits_, probs_;        // (N, G); probs_ only where keeps_probs()
  Tensor aux_dprobs_, aux_dlogits_;  // the router losses' gradients, from forward
  ops::Route route_;
  int64_t capacity_ = 0;  // route_'s capacity before moe.pad_to_largest made it the padded stride
  // f64 on the device: [routing sums | the noiseless choice's sums (only
  // where the bias follows it) | values: load balance, z, budget loss, C,
  // padded]. (The values of losses taken on each rank's tokens are summed
  // over ranks with the sums; stats() divides those it reports by the ranks
  // that routed tokens: the world less `padded`, 1 in a rank's padding call
  // (set_padding), 0 otherwise, summed with them.)
  enum { kLoadBalance, kZ, kBudget, kBudgetCost, kPadded, kValues };
  Tensor totals_;
  Tensor one_;  // f64 {1} on the device, made at the first padding call: kPadded's value there
  std::vector<int32_t> counts_before_padding_;
  // Whether the last forward's balance loss value was taken on this rank's
  // tokens (grouped; a decoded token takes the batch-wide one): summed over
  // ranks with the routing sums.
  bool lb_rank_local_ = false;
  std::vector<float> k_cost_;  // c_g x top_k: the expected-cost loss's costs
  bool pooling_ = false, padding_ = false;
  std::vector<Tensor> pool_;  // pool_statistics: the pooled forwards' totals_ (empty: stats() reads totals_)
  mutable RoutingStats stats_;
  mutable bool stats_read_ = true;  // stats_ holds what totals_ says
};

}  // namespace sy
