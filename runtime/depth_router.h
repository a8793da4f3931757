// DepthRouter: which tokens a depth-routed block processes (the third routed
// computation of the routing core; Raposo et al. 2024, Mixture-of-Depths).
//
//   r_i = w . x_i                                   router score (N)
//   training:  route = groups_choose(r, G=1, C = ceil(capacity * T), per sequence)
//   eval:      route = threshold(sigmoid(W_p sg(x_i) + b_p) > tau)   (causal)
//   y_i = (1 - w_i) x_i + w_i z_i   for routed i (z = the block on routed tokens)
//   y_i = x_i                       otherwise (bit-identical: nothing is added)
//   w_i = sigma(r_i) / sg(sigma(r_i)) (straight-through, 1 in value) or sigma(r_i)
//
// (1 - w) x + w z equals x + w (z - x), and for w = 1 it is z exactly, so a
// block at capacity 1 equals the unrouted block bit for bit.
// Backward: dz_i = w_i dy_i; dx_i += (1 - w_i) dy_i; dw_i = dy_i . (z_i - x_i);
// dr_i = dw_i * dw/dr, with dw/dr = 1 - sigma (straight-through) or
// sigma (1 - sigma); then dW += x^T dr, dx += dr w^T. The predictor's BCE
// gradient reaches only W_p, b_p.
// The routing core does the work: groups_choose / threshold_route pick the
// tokens, dispatch gathers them for the block, residual_combine mixes the
// block's output back (ops/dispatch.h), ops/depth_gate.h the weights and the
// predictor's loss.
//
// Statistics: the predictor's BCE and accuracy and the budget loss are
// computed on the router's device into a row of a DepthStatsBuffer, which
// the model's depth routers share; the host copy is taken once, for all of
// them, the first time stats() asks after a forward. A training step whose
// metrics nobody reports reads nothing back (on a GPU, no wait), and a
// reported one reads once. The budget loss, at coefficient 0, is not computed
// at all (it is 0, and so is its gradient).
#pragma once
#include <memory>
#include <vector>

#include "ops/routing.h"
#include "runtime/config.h"
#include "runtime/params.h"

namespace sy {

struct DepthStats {
  double processed = 0;           // fraction of tokens the block processed
  double predictor_accuracy = 0;  // agreement of (p > tau) with the top-k choice (training)
  double predictor_bce = 0;
  double budget_loss = 0;
};

// The device-side statistics of a model's depth routers: one row of kFields
// f64 per router, written by its ops each forward (ops::predictor_loss into
// [kBce, kAccuracy], ops::budget_loss into [kBudgetLoss, kExpectedCost]),
// copied to the host in one read of every row when a router's statistics are
// asked for after some router wrote its row.
class DepthStatsBuffer {
 public:
  enum Field { kBce, kAccuracy, kBudgetLoss, kExpectedCost, kFields };
  DepthStatsBuffer(Ctx& ctx, int64_t routers);
  int64_t routers() const { return dev_.dim(0); }
  // Router j's row (kFields) on the device: a view its ops write into.
  Tensor row(int64_t j) const;
  // A router wrote its row: the host copy is stale.
  void written() { fresh_ = false; }
  // Router j's row on the host; copies every row first when stale.
  const double* host_row(int64_t j);
  int64_t reads() const { return reads_; }  // host copies taken so far

 private:
  Tensor dev_;  // (routers, kFields) f64, zeros until written
  std::vector<double> host_;
  bool fresh_ = false;
  int64_t reads_ = 0;
};

class DepthRouter {
 public:
  DepthRouter(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, const switchyard::DepthConfig& cfg,
              Rng& rng, float std);
  // Chooses the tokens to process; x (N, C) holds B sequences of T tokens.
  const ops::Route& select(const Tensor& x, int64_t B, int64_t T, bool training);
  // Whether evaluation decides token by token (the predictor's threshold,
  // depth.predictor_at_eval), as decoding one token at a time needs.
  bool causal_at_eval() const { return cfg_.predictor_at_eval(); }
  // y from x (N, C) and the block's output z (route.rows(), C) on routed tokens.
  Tensor combine(const Tensor& x, const Tensor& z);
  // Returns dz; accumulates into dx (N, C) the pass-through and router paths.
  Tensor backward(const Tensor& dy, Tensor& dx);
  // Drops what backward reads but the route (runtime/layers.h).
  void release() { x_ = z_ = r_ = sig_ = weight_ = pred_ = dl_ = dbudget_ = Tensor(); }
  // Statistics of the last select(): processed from the host, the rest from
  // the statistics row (one read of the shared buffer when it is stale; none
  // when nothing but processed is needed: evaluation at budget_coef 0).
  DepthStats stats() const;
  double processed() const { return processed_; }  // host only, never a read
  double aux_loss() const { return cfg_.budget_coef() == 0 ? 0.0 : stats().budget_loss; }
  // Writes the statistics into row `row` of a buffer shared with other
  // routers (the model's; by default the router has its own of one row).
  void share_stats(std::shared_ptr<DepthStatsBuffer> buffer, int64_t row);
  const std::shared_ptr<DepthStatsBuffer>& stats_buffer() const { return stats_buf_; }
  const ops::Route& route() const { return route_; }
  // Tokens routed in each of the B sequences of the last select(). Top-C
  // routing (training, and evaluation without the predictor) routes the same
  // count in every sequence, known on the host; only the threshold route's
  // counts are read back from the device (one copy of the route's groups).
  std::vector<int64_t> per_sequence(int64_t B, int64_t T) const;
  // Each routed row's position in its sequence (item i is at i mod T), in row
  // order, i32 (route().rows()) on the router's device: what rotary
  // embeddings rotate the routed sub-sequences by (ops::dispatch_positions).
  Tensor positions(int64_t T) const;

 private:
  Ctx& ctx_;
  switchyard::DepthConfig cfg_;
  int64_t C_;
  Param *w_, *wp_, *bp_;
  bool training_ = true;
  Tensor x_, z_;
  Tensor r_, sig_, weight_, pred_;  // (N)
  // Gradients of the predictor's BCE (N) and of the budget loss (N, 1; not
  // defined at budget_coef 0), computed in select() for backward().
  Tensor dl_, dbudget_;
  ops::Route route_;
  // Tokens each sequence routes under top-C routing; -1 after a threshold route.
  int64_t per_sequence_ = -1;
  bool selected_ = false;
  double processed_ = 0;
  std::shared_ptr<DepthStatsBuffer> stats_buf_;
  int64_t stats_row_ = 0;
};

}  // namespace sy
