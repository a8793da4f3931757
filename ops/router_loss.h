// Losses that keep routing healthy (each optional; coefficient 0 disables),
// and the per-batch routing sums they and the routing metrics are made from.
//
// Load balance (Switch Transformer, Fedus et al. 2021, eq. 4):
//   L_lb = alpha * G * sum_g f_g P_g,  f_g = (assignments chosen for g) / (N k),
//   P_g = mean_i p_ig.  f is a count (no gradient): dL/dp_ig = alpha G f_g / N.
//   p is whatever distribution the caller passes: the MoE router passes
//   softmax probabilities as they are and sigmoid scores normalised per row
//   (ops::normalize_scores, runtime/router.cc), so that P sums to 1.
// Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5):
//   L_z = beta * mean_i (logsumexp_g l_ig)^2,  dL/dl_ig = 2 beta lse_i softmax(l_i)_g / N.
// Compute budget, two estimators of the cost per token (c_g in units of the
// dense FFN's cost per token, B the budget in the same units):
//   expected (seed 002):  C = sum_i sum_g p_ig c_g / N (the MoE router passes
//     c_g times top_k: a token's cost is that of its k choices),
//     L_b = lambda * max(0, C - B),  dL/dp_ig = lambda c_g / N when C > B, else 0.
//   realised, straight-through:  R = sum over kept assignments a = (i, g) of
//     c_g / N_all, the cost of the routing actually done, counted over every
//     data-parallel rank's N_all items (all-reduced routing sums, as for load
//     balance); L_b = lambda * max(0, R - B) in value, and in gradient that of
//     the surrogate lambda * S, S = sum_{kept (i, g)} p_ig c_g / N (this rank's
//     N):  dL/dp_ig = lambda c_g / N for kept (i, g) when R > B, else 0. The
//     value follows the work done; the gradient lowers the probabilities of the
//     assignments that cost, in proportion to their cost. "Kept" is a
//     parameter: the hard budget's drops (slot -2) may count as kept, so
//     that the loss sees what the router asked for, not what was enforced.
//
// Each loss accumulates its gradient into dprobs or dlogits (N, G) (the
// load-balance and z-losses: where that tensor is defined; undefined, the
// value only, for a router whose backward is router_backward below). The
// load-balance, z- and expected-cost losses leave their values where the
// tensors live: `value`, f64 on that device (a view of a larger tensor is
// fine), overwritten, each rounded to f32; nothing is read back, so a router
// on a GPU adds its losses without waiting for them and reads them only to
// report them (runtime/router.h). The realised-cost loss, whose condition is
// a host value, returns its value.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "ops/backend.h"
#include "ops/routing.h"

namespace sy::ops {

// Routing sums over items [i0, i1) of a route: an f64 tensor, so that it can
// be summed over data-parallel ranks where it lives. RoutingTotals names its
// fields on the host.
//   chosen[g]  assignments that chose group g (before capacity)
//   prob[g]    sum over items of p_ig
//   kept[g]    assignments kept in group g (with a slot: after capacity and budget)
//   cut[g]     assignments of group g dropped by the budget (slot -2)
//   assigned   used assignments;  items  number of items
//   dropped    used assignments dropped over capacity (slot -1)
//   unserved   items none of whose assignments was kept (no group at all)
//   entropy    sum over items of -sum_g p_ig log p_ig
//   budget_dropped  used assignments dropped by the budget (sum of cut)
int64_t routing_sums_size(int64_t G);
void routing_sums(Ctx& ctx, Tensor& sums, const Tensor& probs, const Route& r, int64_t i0 = 0, int64_t i1 = -1);
// The same sums with p = score_fn(logits) recomputed row by row (logits
// (N, G) f32, r over all N items): for a gating that keeps no probabilities
// (tokens_choose_logits with probs undefined). The same sums as
// router_scores then routing_sums, to the probabilities' rounding.
void routing_sums_logits(Ctx& ctx, Tensor& sums, const Tensor& logits, ScoreFn fn, const Route& r);

struct RoutingTotals {
  std::vector<double> chosen, prob, kept, cut;
  double assigned = 0, items = 0, dropped = 0, unserved = 0, entropy = 0, budget_dropped = 0;

  static RoutingTotals read(const Tensor& sums, int64_t G);  // a host copy for device tensors
  // f_g: share of used assignments; P_g: mean probability.
  std::vector<double> f() const;
  std::vector<double> P() const;
  // Costs per item for c (G): realised, sum_g kept_g c_g / items; before the
  // budget's drops, sum_g (kept_g + cut_g) c_g / items; expected (soft), the
  // mean cost of the route's assignments per item drawn from the mean
  // probabilities: (assigned / items) sum_g P_g c_g / sum_g P_g (for softmax
  // top-1: sum_i sum_g p_ig c_g / N; the MoE router's sums hold sigmoid
  // scores over their row sums, ops::normalize_scores).
  double realized_cost(const std::vector<float>& c) const;
  double cost_before_budget(const std::vector<float>& c) const;
  double expected_cost(const std::vector<float>& c) const;
};

// L_lb from routing sums (routing_sums' layout; f and P as RoutingTotals
// makes them): the sums may cover more tokens than the N of dprobs (every
// data-parallel rank's, all-reduced), which makes the loss independent of how
// the batch is split. The gradient alpha G f_g / N uses this rank's N: with
// the data-parallel average over ranks of equal N it is the gradient of the
// global loss. value: f64 (1).
void load_balance_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& sums, float alpha);
// Grouped (GShard groups; DeepSeek-V3's sequence-wise loss when group is the
// sequence length, the router passing sigmoid scores normalised as that
// paper's P_sg takes them, ops::normalize_scores): items split into runs of
// `group` consecutive items, S = N / group of them, each with its own f_sg and P_sg;
//   L = alpha * G * (1/S) sum_s sum_g f_sg P_sg,  dL/dp_ig = alpha G f_sg / N
// for i in run s. group = N is the ungrouped loss. N % group == 0. value: f64 (1).
void load_balance_loss_grouped(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const Route& r,
                               int64_t group, float alpha);
// value: f64 (1).
void z_loss(Ctx& ctx, Tensor& dlogits, Tensor& value, const Tensor& logits, float beta);
// The expected-cost budget loss; cost (G) on the host, or empty for all ones.
// value: f64 (2), value[0] = L_b and value[1] = C; the condition C > B of the
// gradient is decided on the device too (a depth router,
// runtime/depth_router.h, adds it on a GPU without waiting).
void budget_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const std::vector<float>& cost,
                 float budget, float lambda);

// The realised-cost budget loss: `realized` is R (from routing sums that may
// span several ranks); returns lambda * max(0, R - B) and, when R > B, adds
// lambda c_g / N to dprobs (N, G) for every kept assignment of r (slot >= 0,
// and slot -2 too when count_budget_drops). *surrogate, when given, receives
// S = sum_{kept (i, g)} p_ig c_g / N (whatever R is): the function whose
// gradient this is (finite-difference checks).
// With `sums` (routing sums on the device of dprobs, e.g. all-reduced) R is
// taken from them instead of `realized`: RoutingTotals' cost_before_budget
// (count_budget_drops) or realized_cost, computed and compared with B where
// they live; the value then goes to `value` (f64 (1), required with sums)
// and 0 is returned: nothing is read back (runtime/router.h).
struct RealizedBudgetArgs {
  const std::vector<float>& cost;  // (G) on the host
  double realized = 0;
  float budget = 1, lambda = 0;
  bool count_budget_drops = true;
  double* surrogate = nullptr;
  const Tensor* sums = nullptr;
  Tensor* value = nullptr;
};
float realized_budget_loss(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const Route& r,
                           const RealizedBudgetArgs& a);

// The router's backward in one pass, from its logits (the probabilities
// recomputed, as FlashAttention recomputes its scores): for item i,
//   dp_ig = a_g + d weight_i / d p_ig applied to dweight_i
//           (a_g = alpha G f_g / N, load balance from `sums`, alpha 0: none;
//           the weights' part as route_weights_backward, renormalised or not)
//   dl_ig = 2 beta lse_i softmax(l_i)_g / N + (J_score_fn(l_i)^T dp_i)_g
//           (the z-loss; beta 0: none)
// written to dlogits (N, G), not added. It is, to the probabilities'
// rounding, this sequence (the CPU reference runs exactly it): dprobs =
// load_balance_loss's gradient from zeros, route_weights_backward onto it,
// dlogits = z_loss's gradient from zeros, router_scores_backward onto it.
// (alpha's term is over p = score_fn(l) as it is; the MoE router with
// sigmoid scores balances their normalised rows instead and so keeps its
// probabilities and takes the unfused path.)
// Where a router keeps no probabilities and has no other losses on them
// (runtime/router.cc): one read of the logits and one write of dlogits, for
// the two zero-filled gradients, their clones and the three passes that
// read and wrote them (and the probabilities' write in forward).
struct RouterBackwardArgs {
  const Tensor& logits;   // (N, G) f32, what the gating read
  ScoreFn fn;
  const Route& route;     // N items over G groups (no runs of their own)
  const Tensor& dweight;  // (N k) f32
  bool renormalized = false;
  const Tensor* sums = nullptr;  // routing sums (routing_sums' layout), with alpha != 0
  float alpha = 0, beta = 0;
};
void router_backward(Ctx& ctx, Tensor& dlogits, const RouterBackwardArgs& a);

// The CPU reference (ops/cpu/router_loss.cc) and the CUDA kernels (ops/cuda/router_loss.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void routing_sums(Ctx& ctx, Tensor& sums, const Tensor& probs, const Route& r, int64_t i0, int64_t i1);
  void routing_sums_logits(Ctx& ctx, Tensor& sums, const Tensor& logits, ScoreFn fn, const Route& r);
  void router_backward(Ctx& ctx, Tensor& dlogits, const RouterBackwardArgs& a);
  void load_balance_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& sums, float alpha);
  void load_balance_loss_grouped(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const Route& r,
                                 int64_t group, float alpha);
  void z_loss(Ctx& ctx, Tensor& dlogits, Tensor& value, const Tensor& logits, float beta);
  void budget_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const std::vector<float>& cost,
                   float budget, float lambda);
  float realized_budget_loss(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const Route& r,
                             const RealizedBudgetArgs& a);
)

}  // namespace sy::ops
