// The routing core: a Route sends N items (tokens) to G groups (experts,
// attention clusters, a depth router's "process" group), k assignments per
// item, at most C rows per group. MoE, routed attention and adaptive depth all
// produce a Route here and move rows with dispatch/combine (ops/dispatch.h).
//
// Route fields, assignment a = i*k + j (item i, choice j):
//   group[a]  chosen group, or -1 where the assignment is unused
//   weight[a] combine weight
//   slot[a]   row within the group's buffer, or -1 when dropped over capacity
//   count[g]  kept rows of group g;  offset = exclusive prefix sums (G+1),
//             so assignment a lives in buffer row offset[group[a]] + slot[a]
//
// Policies:
//  1. tokens choose:  p = softmax(l) or sigmoid(l) (fp32); each item takes its
//     top-k groups by p + selection_bias (the bias moves selection only, never
//     the weight; DeepSeek-V3's auxiliary-loss-free balancing), or by given
//     selection keys + selection_bias (Gumbel draws);
//     C = ceil(capacity_factor * N * k / G); overflow is dropped (and counted)
//     or, dropless, C grows to the largest count. Slots are handed out choice
//     rank by choice rank (every item's 1st choice before any 2nd choice), in
//     item order (POSITION: first come, first served, Switch Transformer) or
//     in order of the item's top score (SCORE: batch-prioritised routing, V-MoE).
//     weight = p of the chosen group, optionally renormalised over the k.
//  2. groups choose:  each group takes its top-C items by score (expert
//     choice; routed attention's balanced clusters; depth routing with G = 1).
//     k = G: assignment (i, g) is used when group g chose item i. Slots within
//     a group follow item position. weight = the score.
//  3. threshold:      G = k = 1; item i is routed when score_i > tau.
// Ties: the lower index wins everywhere (a kernel can reproduce it exactly).
#pragma once
#include <cstdint>
#include <vector>

namespace sy::ops {

struct Route {
  int64_t num_items = 0, k = 0, num_groups = 0, capacity = 0;
  std::vector<int32_t> group;   // (N*k)
  std::vector<float> weight;    // (N*k)
  std::vector<int32_t> slot;    // (N*k)
  std::vector<int32_t> count;   // (G)
  std::vector<int32_t> offset;  // (G+1)
  int64_t assigned = 0;         // used assignments (group >= 0)
  int64_t dropped = 0;          // used assignments without a slot

  int64_t rows() const { return offset.empty() ? 0 : offset.back(); }
  // Buffer row of assignment a, or -1 when it is unused or dropped.
  int64_t row(int64_t a) const { return slot[a] < 0 ? -1 : offset[group[a]] + slot[a]; }
};

enum class ScoreFn { softmax, sigmoid };
enum class SlotPriority { position, score };

struct TokensChooseParams {
  int k = 1;
  float capacity_factor = 1.25f;
  bool dropless = false;
  ScoreFn score_fn = ScoreFn::softmax;
  SlotPriority priority = SlotPriority::position;
  bool renormalize = false;
  std::vector<float> selection_bias;  // (G) or empty
  // (N*G) or empty: when given, items select their top-k by these keys (plus
  // selection_bias) instead of by p; the weights are still p. Sampling a
  // group in proportion to p is keys = log p + Gumbel noise (Gumbel-max).
  const std::vector<float>* selection_keys = nullptr;
};

// ceil(fraction * n) for capacities given as float fractions or factors.
// Config floats like 0.3 are stored as 0.30000001; a relative tolerance of
// 1e-6 keeps ceil from counting that last ulp as one more row.
int64_t ceil_capacity(double fraction, double n);

// scores = score_fn(logits), row by row.  logits, probs (N, G)
void router_scores(std::vector<float>& probs, const float* logits, int64_t N, int64_t G, ScoreFn fn);

// Tokens choose: probs (N, G) from router_scores.
Route tokens_choose(const std::vector<float>& probs, int64_t N, int64_t G,
                    const TokensChooseParams& p);

// Groups choose: each group g takes the `capacity` items with the highest
// scores[i*G + g]; scores (N, G). With segment > 0 the choice is made in every
// run of `segment` consecutive items separately (per sequence, as depth
// routing does): capacity items per group per segment; N % segment == 0.
Route groups_choose(const std::vector<float>& scores, int64_t N, int64_t G, int64_t capacity,
                    int64_t segment = 0);

// Threshold: scores (N), route item i where scores[i] > tau.
Route threshold_route(const std::vector<float>& scores, int64_t N, float tau);

// Gradient of the combine weights w.r.t. the probabilities they came from:
// dprobs (N, G) += d weight / d probs applied to dweight (N*k). Handles the
// optional renormalisation (w_j = p_j / sum_l p_l over the item's choices).
void route_weights_backward(std::vector<float>& dprobs, const std::vector<float>& dweight,
                            const std::vector<float>& probs, const Route& r, bool renormalized);

// dlogits (N, G) += J_score_fn^T dprobs: softmax p (dp - <p, dp>), sigmoid p (1-p) dp.
void router_scores_backward(std::vector<float>& dlogits, const std::vector<float>& dprobs,
                            const std::vector<float>& probs, int64_t N, int64_t G, ScoreFn fn);

// Auxiliary-loss-free balancing: bias_g += rate * sign(mean load - load_g).
void update_balance_bias(std::vector<float>& bias, const std::vector<int64_t>& load, float rate);

}  // namespace sy::ops
