// The routing core: a Route sends N items (tokens) to G groups (experts,
// attention clusters, a depth router's "process" group), k assignments per
// item, at most C rows per group. MoE, routed attention and adaptive depth all
// produce a Route here and move rows with dispatch/combine (ops/dispatch.h).
//
// Route fields, assignment a = i*k + j (item i, choice j), tensors on the
// routing context's device:
//   group[a]  chosen group, or -1 where the assignment is unused     i32 (N*k)
//   weight[a] combine weight                                          f32 (N*k)
//   slot[a]   row within the group's buffer, or -1 when dropped over
//             capacity, -2 when dropped by the budget (apply_budget)   i32 (N*k)
//   count[g]  kept rows of group g                                    i32 (G)
//   offset    exclusive prefix sums of count (G+1), so assignment a lives in
//             buffer row offset[group[a]] + slot[a]                   i32 (G+1)
// and on the host, from the one device-to-host copy per routed layer:
//   host_offset (G+1), assigned (used assignments), dropped (used but
//   without a slot over capacity) and budget_dropped (used, given a slot by
//   the policy, then dropped by apply_budget). Buffer sizes and expert GEMM
//   shapes come from these.
//
// Policies:
//  1. tokens choose:  p = softmax(l) or sigmoid(l) (fp32, router_scores); each
//     item takes its top-k groups by p + selection_bias (the bias moves
//     selection only, never the weight; DeepSeek-V3's auxiliary-loss-free
//     balancing), or by given selection keys + selection_bias (Gumbel draws);
//     C = max(ceil(capacity_factor * N * k / G), min_capacity); overflow is dropped (and counted)
//     or, dropless, C grows to the largest count. Slots are handed out choice
//     rank by choice rank (every item's 1st choice before any 2nd choice), in
//     item order (POSITION: first come, first served, Switch Transformer) or
//     in order of the item's top score (SCORE: batch-prioritised routing, V-MoE)
//     or of given priority keys (random token selection); or item by item,
//     each item's choices in rank order (TOKEN_ORDER: whether item i keeps a choice
//     depends on items 0..i only, so k >= 2 under a capacity is causal).
//     weight = p of the chosen group, optionally renormalised over the k.
//  2. groups choose:  each group takes its top-C items by score (expert
//     choice; routed attention's balanced clusters; depth routing with G = 1).
//     k = G: assignment (i, g) is used when group g chose item i. Slots within
//     a group follow item position. weight = the score.
//  3. threshold:      G = k = 1; item i is routed when score_i > tau.
// Ties: the lower index wins everywhere (a kernel can reproduce it exactly).
//
// A policy step after any of them (and after capacity):
//  4. budget (apply_budget): group g costs c_g >= 0 per kept assignment; the
//     kept cost sum_{kept a} c_{group[a]} of the N items must not exceed B N.
//     Batch: when it does, kept assignments are dropped in priority order,
//     the lowest score[i, group[a]] first, ties to the later assignment
//     (the later item; within an item the later choice), skipping zero-cost
//     ones, until it fits. Causal: items in position order, each run of
//     `segment` items (a sequence) on its own; item t of a run may spend
//     B (t + 1) minus what items 0..t-1 of the run kept, and drops its own
//     kept assignments in the same priority order until it fits: its
//     decision depends on items 0..t only. Either way dropped assignments get
//     slot -2, the survivors' slots are renumbered 0..count-1 in their old
//     order, and count, offset and host_offset are recomputed. Sums are in
//     double, in assignment order: that sum of the kept costs is <= B N
//     (batch) and <= B S for every run of S items (causal).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "ops/backend.h"
#include "ops/group_limit.h"

namespace sy::ops {

struct Route {
  int64_t num_items = 0, k = 0, num_groups = 0, capacity = 0;
  Tensor group, weight, slot, count, offset;
  std::vector<int32_t> host_offset;  // (G+1)
  int64_t assigned = 0;              // used assignments (group >= 0)
  int64_t dropped = 0;               // used assignments without a slot (over capacity)
  int64_t budget_dropped = 0;        // used assignments dropped by apply_budget
  bool padded = false;               // offset[g] = g * capacity (see the top of the file)

  int64_t rows() const { return host_offset.empty() ? 0 : host_offset.back(); }
  int64_t assignments() const { return num_items * k; }
  // Kept rows per group, from host_offset.
  std::vector<int32_t> host_count() const;
  // Buffer row of assignment a, or -1 when it is unused or dropped. Host
  // tensors only (the CPU reference and tests; on_host() for a device route).
  int64_t row(int64_t a) const;
  // The same route with group and slot on the host (copied, with a wait,
  // where they are on a device), for row() and host reads. The wait is for
  // `ordered`'s stream (the one the route was made on: core/context.h's
  // host_ctx_on), or with host_ctx() for the whole device.
  Route on_host(const Ctx& ordered = host_ctx()) const;
};

enum class ScoreFn { softmax, sigmoid };
enum class SlotPriority { position, score, token_order };

struct TokensChooseParams {
  int k = 1;
  float capacity_factor = 1.25f;
  int64_t min_capacity = 0;  // a floor under C (DeepSpeed-MoE's min_capacity)
  bool dropless = false;
  SlotPriority priority = SlotPriority::position;
  bool renormalize = false;
  const Tensor* selection_bias = nullptr;  // f32 (G) or null
  // f32 (N, G) or null: when given, items select their top-k by these keys
  // (plus selection_bias) instead of by p; the weights are still p. Sampling a
  // group in proportion to p is keys = log p + Gumbel noise (Gumbel-max).
  const Tensor* selection_keys = nullptr;
  // f32 (N) or null: with priority score, items take their slots in the
  // order of these keys (descending, ties to the lower item) instead of
  // their top score. Uniform draws make it random token selection (DeepSpeed-
  // MoE's RTS): the drops of an overflowing expert fall on random tokens,
  // not on the batch's last (POSITION) or its least sure (SCORE).
  const Tensor* priority_keys = nullptr;
  // A padded route (see the top of the file); not with dropless, whose
  // capacity is a count read back from the device.
  bool padded = false;
  // > 0: the items are runs of `segment` (routed attention's heads, stacked),
  // each run with its own G groups: item i chooses among groups
  // (i / segment) G + g by probs[i, g] (selection_bias indexed by g); the
  // route has N / segment * G groups and capacity
  // ceil(capacity_factor * segment * k / G) (dropless: the longest of all).
  // It is the route of one call per run with run s's groups renumbered s G + g,
  // but for dropless capacity: one number for all runs.
  int64_t segment = 0;
  // On: items choose only among the experts of their group_limit.kept best
  // routing groups (ops/group_limit.h, DeepSeek-V3's node-limited routing):
  // limit_groups over the selection keys (or p) and selection_bias first,
  // then the top-k on its output as the keys; k <= kept * G / groups. Not
  // with segment. ops/routing.cc composes the steps for every backend (the
  // gating calls then compute p once more for the limit, and on CUDA
  // write the limited keys once: two launches and an (N, G) pass more).
  GroupLimit group_limit;
};

struct BudgetParams {
  std::vector<float> cost;  // (G) c_g >= 0, on the host
  double budget = 1;        // B, cost per item
  bool causal = false;      // a running budget by position
  int64_t segment = 0;      // causal: items per run (0: one run of all N)
};

// ceil(fraction * n) for capacities given as float fractions or factors (a
// config's float). Floats like 0.3 are stored as 0.30000001, whose last ulp
// would count as one more row at n = 10: the product is taken of the float's
// shortest decimal (0.3) instead, in double, with a relative tolerance of
// 1e-12 for the double's own rounding. (A tolerance of 1e-6 on the float's
// product, as before, ate real fractions at large n: 1.0 x 1000000.5 gave
// 1000000 and even 1.0 x 1000000 gave 999999.)
int64_t ceil_capacity(float fraction, double n);

// Tokens choose's capacity C = max(ceil(capacity_factor * run * k / groups),
// min_capacity) for a run of `run` items over `groups` groups (not
// dropless): the one formula of both backends, and of the decoders that
// reproduce a window's drops one token at a time (runtime/router.cc,
// runtime/sparse_self_attention.cc).
int64_t tokens_choose_capacity(const TokensChooseParams& p, int64_t run, int64_t groups);

// A padded route's host part: host_offset[g] = g * capacity, assigned N k,
// dropped -1, padded (the backends' tokens_choose calls it).
void set_padded_host_part(Route& r);

// A counted route's host part re-laid padded (pad_to_largest below):
// capacity M = min(round_up(largest count, multiple), max(capacity, largest
// count)), host_offset[g] = g M, padded; assigned, dropped and
// budget_dropped kept. Returns M.
int64_t set_largest_padded_host_part(Route& r, int64_t multiple);

// A route whose counts the host has read (tokens choose, dropless, after a
// budget's drops; not already padded) re-laid as a padded one at the
// largest group's count rounded up to `multiple` rows (at most the
// capacity): offset[g] = g M, capacity M; group, weight, slot and count
// kept. Its buffers then hold padding rows, which dispatch writes as zeros
// (ops/dispatch.h) like a padded route's, and experts of one width run as
// one strided-batched GEMM a direction (ops/expert_ffn.h), padded only as
// far as this step's largest expert needs. The offsets are uploaded, not
// read back: no wait on a GPU.
void pad_to_largest(Ctx& ctx, Route& r, int64_t multiple);

// probs = score_fn(logits), row by row.  logits, probs (N, G) f32
void router_scores(Ctx& ctx, Tensor& probs, const Tensor& logits, ScoreFn fn);
// dlogits (N, G) += J_score_fn^T dprobs: softmax p (dp - <p, dp>), sigmoid p (1-p) dp.
void router_scores_backward(Ctx& ctx, Tensor& dlogits, const Tensor& dprobs, const Tensor& probs, ScoreFn fn);

// The routing distribution of sigmoid scores, whose rows do not sum to 1:
// each row divided by its sum (DeepSeek-V3's s'_it = s_it / sum_j s_jt in its
// complementary sequence-wise balance loss; Megatron-LM divides sigmoid scores the
// same way for its auxiliary losses). Softmax rows need nothing.
//   q_ig = p_ig / s_i,  s_i = sum_h p_ih    (s_i = 0: q_i = 0)
//   dp_ij += (dq_ij - sum_g dq_ig q_ig) / s_i          (backward, added)
// The MoE router's load-balance P_g and routing entropy are of q
// (runtime/router.cc). probs, q, dq, dprobs (N, G) f32.
void normalize_scores(Ctx& ctx, Tensor& q, const Tensor& probs);
void normalize_scores_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dq, const Tensor& probs);

// Tokens choose over probs (N, G) from router_scores.
void tokens_choose(Ctx& ctx, Route& r, const Tensor& probs, const TokensChooseParams& p);

// Gating: router_scores then tokens_choose, in one call: probs = score_fn(
// logits) written and the route chosen from them, bit for bit the two
// calls' result. probs may be an undefined Tensor: then the probabilities
// are not kept (a router that recomputes them from the logits where it
// needs them: routing_sums_logits, router_backward in ops/router_loss.h),
// and the route is the same. On CUDA the scores and the top-k are one
// kernel (8 or 16 lanes a row: the logits read once; up to 128 groups and
// k <= 8 the row stays in registers, the probabilities written once or not
// at all, the top-k merged across the row's lanes; past that through
// memory), then tokens_choose's slot steps. With a group limit the
// probabilities come first (router_scores) for limit_groups, then the same
// kernel chooses on the limited keys.
void tokens_choose_logits(Ctx& ctx, Route& r, Tensor& probs, const Tensor& logits, ScoreFn fn,
                          const TokensChooseParams& p);

// The gating alone: tokens_choose_logits without capacity and slots (the
// choice of policy 1, before step 2 of the CUDA notes): probs = score_fn(
// logits), and each item's top-k groups and combine weights, bit for bit the
// group and weight tokens_choose_logits writes into its route. group (N*k)
// i32, weight (N*k) f32, probs (N, G) f32 or undefined (not written, as
// for tokens_choose_logits); p's k, renormalize,
// selection_bias, selection_keys, segment and group_limit are read, its capacity,
// dropless, priority and padded are not. On CUDA: the one gating kernel
// (after router_scores and limit_groups where a group limit is on).
// What a route's buffers are not needed for (a dropless top-k whose rows are
// gathered by group, or timing the gating on its own: bench_ops).
void tokens_gate(Ctx& ctx, Tensor& group, Tensor& weight, Tensor& probs, const Tensor& logits, ScoreFn fn,
                 const TokensChooseParams& p);

// Groups choose: each group g takes the `capacity` items with the highest
// scores[i, g]; scores (N, G). With segment > 0 the choice is made in every
// run of `segment` consecutive items separately (per sequence, as depth
// routing does): capacity items per group per segment; N % segment == 0.
// Every group keeps exactly min(capacity, segment) items of every segment
// (min(capacity, N) without segments), whatever the scores: callers know the
// counts without reading the route back.
// own_groups (with segments): every segment has its own G groups instead, as
// TokensChooseParams::segment: item i of segment s is in group s G + g
// (assignment i G + g, so k = G), segments * G groups of min(capacity,
// segment) rows, capacity min(capacity, segment).
void groups_choose(Ctx& ctx, Route& r, const Tensor& scores, int64_t capacity, int64_t segment = 0,
                   bool own_groups = false);

// Threshold: scores (N), route item i where scores[i] > tau.
void threshold_route(Ctx& ctx, Route& r, const Tensor& scores, float tau);

// The budget step on a route: scores (N, G) give the drop priority (the
// router's probabilities for MoE). See "4. budget" above. Not on padded
// routes (it renumbers the offsets).
void apply_budget(Ctx& ctx, Route& r, const Tensor& scores, const BudgetParams& p);

// Gradient of the combine weights w.r.t. the probabilities they came from:
// dprobs (N, G) += d weight / d probs applied to dweight (N*k). Handles the
// optional renormalisation (w_j = p_j / sum_l p_l over the item's choices).
void route_weights_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dweight, const Tensor& probs,
                            const Route& r, bool renormalized);

// Auxiliary-loss-free balancing: bias_g += rate * sign(mean load - load_g);
// bias (G) f32, load (G) or (M, G) f64 counts on the same device (the chosen
// counts of all-reduced routing sums, ops/router_loss.h; M rows: a step's M
// micro-batches, load_g their sum in row order, the mean over g of those
// sums): decided where they live, nothing read back. The bias moves once per
// optimizer step, on the step's whole load, whatever M is.
void update_balance_bias(Ctx& ctx, Tensor& bias, const Tensor& load, float rate);

// The CPU reference (ops/cpu/routing.cc) and the CUDA kernels (ops/cuda/routing.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void router_scores(Ctx& ctx, Tensor& probs, const Tensor& logits, ScoreFn fn);
  void router_scores_backward(Ctx& ctx, Tensor& dlogits, const Tensor& dprobs, const Tensor& probs, ScoreFn fn);
  void normalize_scores(Ctx& ctx, Tensor& q, const Tensor& probs);
  void normalize_scores_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dq, const Tensor& probs);
  void tokens_choose(Ctx& ctx, Route& r, const Tensor& probs, const TokensChooseParams& p);
  void tokens_choose_logits(Ctx& ctx, Route& r, Tensor& probs, const Tensor& logits, ScoreFn fn,
                            const TokensChooseParams& p);
  void tokens_gate(Ctx& ctx, Tensor& group, Tensor& weight, Tensor& probs, const Tensor& logits, ScoreFn fn,
                   const TokensChooseParams& p);
  void groups_choose(Ctx& ctx, Route& r, const Tensor& scores, int64_t capacity, int64_t segment, bool own_groups);
  void threshold_route(Ctx& ctx, Route& r, const Tensor& scores, float tau);
  void apply_budget(Ctx& ctx, Route& r, const Tensor& scores, const BudgetParams& p);
  void pad_to_largest(Ctx& ctx, Route& r, int64_t multiple);
  void route_weights_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dweight, const Tensor& probs,
                              const Route& r, bool renormalized);
  void update_balance_bias(Ctx& ctx, Tensor& bias, const Tensor& load, float rate);
)

}  // namespace sy::ops
