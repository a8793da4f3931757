#include "ops/routing.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>

#include "ops/backend.h"

namespace sy::ops {

int64_t tokens_choose_capacity(const TokensChooseParams& p, int64_t run, int64_t groups) {
  return std::max(ceil_capacity(p.capacity_factor, static_cast<double>(run) * p.k / groups), p.min_capacity);
}

int64_t ceil_capacity(float fraction, double n) {
  // The float's shortest decimal (0.3f -> "0.3"), read as a double: what the
  // config said, not its float's last ulp. (to_chars and from_chars: no locale.)
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof buf, fraction).ptr;
  double f = 0;
  std::from_chars(buf, end, f);
  const double x = f * n;
  // (1e-12: the double product's own rounding, 0.3 x 10 = 3.0000000000000004)
  return static_cast<int64_t>(std::ceil(x - 1e-12 * std::fabs(x)));
}

void set_padded_host_part(Route& r) {
  SY_CHECK(r.capacity * r.num_groups < INT32_MAX,
           "padded route: " << r.num_groups << " groups x capacity " << r.capacity << " rows (at most 2^31 - 1)");
  r.host_offset.resize(r.num_groups + 1);
  for (int64_t g = 0; g <= r.num_groups; ++g) r.host_offset[g] = static_cast<int32_t>(g * r.capacity);
  r.assigned = r.num_items * r.k;
  r.dropped = -1;
  r.padded = true;
}

int64_t set_largest_padded_host_part(Route& r, int64_t multiple) {
  const std::vector<int32_t> count = r.host_count();
  const int64_t largest = count.empty() ? 0 : *std::max_element(count.begin(), count.end());
  const int64_t M = std::min((largest + multiple - 1) / multiple * multiple, std::max(r.capacity, largest));
  SY_CHECK(M * r.num_groups < INT32_MAX,
           "padded route: " << r.num_groups << " groups x " << M << " rows (at most 2^31 - 1)");
  r.capacity = M;
  for (int64_t g = 0; g <= r.num_groups; ++g) r.host_offset[g] = static_cast<int32_t>(g * M);
  r.padded = true;
  return M;
}

std::vector<int32_t> Route::host_count() const {
  std::vector<int32_t> c(num_groups, 0);
  for (int64_t g = 0; g < num_groups && g + 1 < static_cast<int64_t>(host_offset.size()); ++g)
    c[g] = host_offset[g + 1] - host_offset[g];
  return c;
}

Route Route::on_host(const Ctx& ordered) const {
  const Ctx host = host_ctx_on(ordered);
  Route h = *this;
  if (group.defined() && !group.device().is_cpu()) h.group = group.to(host);
  if (slot.defined() && !slot.device().is_cpu()) h.slot = slot.to(host);
  return h;
}

int64_t Route::row(int64_t a) const {
  // (data<>() does not check the device: a device route read here would
  // dereference device pointers on the host)
  SY_CHECK(slot.device().is_cpu() && group.device().is_cpu(), "Route::row on a device route: call on_host() first");
  const int32_t s = slot.data<int32_t>()[a];
  return s < 0 ? -1 : host_offset[group.data<int32_t>()[a]] + s;
}

namespace {
void check_matrix(const Tensor& t, const char* what) {
  check_dtype(t, DType::f32, what);
  SY_CHECK(t.ndim() == 2, what << " " << shape_str(t.shape()) << " is not (N, G)");
}
}  // namespace

void router_scores(Ctx& ctx, Tensor& probs, const Tensor& logits, ScoreFn fn) {
  check_matrix(logits, "router logits");
  check_shape(probs, logits.shape(), "router probs");
  check_device(ctx, "router_scores", {&probs, &logits});
  SY_DISPATCH(ctx, router_scores, ctx, probs, logits, fn);
}

void router_scores_backward(Ctx& ctx, Tensor& dlogits, const Tensor& dprobs, const Tensor& probs, ScoreFn fn) {
  check_matrix(probs, "router probs");
  check_shape(dprobs, probs.shape(), "router dprobs");
  check_shape(dlogits, probs.shape(), "router dlogits");
  check_device(ctx, "router_scores_backward", {&dlogits, &dprobs, &probs});
  SY_DISPATCH(ctx, router_scores_backward, ctx, dlogits, dprobs, probs, fn);
}

void normalize_scores(Ctx& ctx, Tensor& q, const Tensor& probs) {
  check_matrix(probs, "router probs");
  check_shape(q, probs.shape(), "normalised scores");
  check_dtype(q, DType::f32, "normalised scores");
  check_device(ctx, "normalize_scores", {&q, &probs});
  SY_DISPATCH(ctx, normalize_scores, ctx, q, probs);
}

void normalize_scores_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dq, const Tensor& probs) {
  check_matrix(probs, "router probs");
  check_shape(dq, probs.shape(), "normalised scores' gradient");
  check_shape(dprobs, probs.shape(), "router dprobs");
  check_dtype(dq, DType::f32, "normalised scores' gradient");
  check_dtype(dprobs, DType::f32, "router dprobs");
  check_device(ctx, "normalize_scores_backward", {&dprobs, &dq, &probs});
  SY_DISPATCH(ctx, normalize_scores_backward, ctx, dprobs, dq, probs);
}

namespace {
// tokens_choose's parameters against the (N, G) scores it chooses from.
void check_tokens_choose(Ctx& ctx, const Tensor& scores, const TokensChooseParams& p, const char* op) {
  const int64_t N = scores.dim(0), G = scores.dim(1);
  SY_CHECK(p.k >= 1 && p.k <= G, "top_k = " << p.k << " with " << G << " groups");
  if (p.selection_bias) check_shape(*p.selection_bias, {G}, "selection bias");
  if (p.selection_keys) check_shape(*p.selection_keys, {N, G}, "selection keys");
  if (p.priority_keys) {
    check_shape(*p.priority_keys, {N}, "priority keys");
    check_dtype(*p.priority_keys, DType::f32, "priority keys");
    SY_CHECK(p.priority == SlotPriority::score, op << ": priority keys order the slots under SCORE priority only");
  }
  SY_CHECK(!(p.padded && p.dropless), op << ": a padded route needs a capacity known in advance, not dropless");
  SY_CHECK(p.segment >= 0 && (p.segment == 0 || N % p.segment == 0), op << ": " << N << " items in runs of " << p.segment);
  // (limit_groups checks the groups themselves; here what the top-k needs of them)
  const GroupLimit& gl = p.group_limit;
  if (gl.on()) {
    SY_CHECK(p.segment == 0, op << ": a group limit over runs of " << p.segment << " items (not with segment)");
    SY_CHECK(p.k <= gl.kept * (G / gl.groups), op << ": top-" << p.k << " within " << gl.kept << " of " << gl.groups
                                                  << " routing groups of " << G
                                                  << " experts (k must fit the kept groups' experts)");
  }
  check_device(ctx, op, {&scores, p.selection_bias, p.selection_keys, p.priority_keys});
}

// A group-limited choice as the backends take it: p with limit_groups'
// output over the selection keys (or the probabilities) and the bias as its
// selection keys, and no limit. Holds the keys params points to (no copies).
struct LimitedChoice {
  Tensor keys;
  TokensChooseParams params;
  LimitedChoice(Ctx& ctx, const Tensor& probs, const TokensChooseParams& p)
      : keys(Tensor::empty(probs.shape(), DType::f32, ctx)), params(p) {
    limit_groups(ctx, keys, p.selection_keys ? *p.selection_keys : probs, p.selection_bias, p.group_limit);
    params.selection_keys = &keys;
    params.group_limit = GroupLimit{};
  }
  // From logits: their probabilities first (written into probs where it is
  // defined; the gating then writes the same bits again).
  LimitedChoice(Ctx& ctx, const Tensor& probs, const Tensor& logits, ScoreFn fn, const TokensChooseParams& p)
      : LimitedChoice(ctx, scores_of(ctx, probs, logits, fn), p) {}
  LimitedChoice(const LimitedChoice&) = delete;
  LimitedChoice& operator=(const LimitedChoice&) = delete;

 private:
  static Tensor scores_of(Ctx& ctx, const Tensor& probs, const Tensor& logits, ScoreFn fn) {
    Tensor scores = probs.defined() ? probs : Tensor::empty(logits.shape(), DType::f32, ctx);
    router_scores(ctx, scores, logits, fn);
    return scores;
  }
};
}  // namespace

void tokens_choose(Ctx& ctx, Route& r, const Tensor& probs, const TokensChooseParams& p) {
  check_matrix(probs, "router probs");
  check_tokens_choose(ctx, probs, p, "tokens_choose");
  if (p.group_limit.on()) {
    const LimitedChoice limited(ctx, probs, p);
    return tokens_choose(ctx, r, probs, limited.params);
  }
  SY_DISPATCH(ctx, tokens_choose, ctx, r, probs, p);
}

namespace {
// The gating's logits and the probabilities it writes from them (where
// probs is defined), with p.
void check_gating(Ctx& ctx, const Tensor& probs, const Tensor& logits, const TokensChooseParams& p, const char* op) {
  check_matrix(logits, "router logits");
  check_tokens_choose(ctx, logits, p, op);
  if (!probs.defined()) return;
  check_shape(probs, logits.shape(), "router probs");
  check_dtype(probs, DType::f32, "router probs");
  check_device(ctx, op, {&probs});
}
}  // namespace

void tokens_choose_logits(Ctx& ctx, Route& r, Tensor& probs, const Tensor& logits, ScoreFn fn,
                          const TokensChooseParams& p) {
  check_gating(ctx, probs, logits, p, "tokens_choose_logits");
  if (p.group_limit.on()) {  // p first for the limit, then the gating on the limited keys
    const LimitedChoice limited(ctx, probs, logits, fn, p);
    return tokens_choose_logits(ctx, r, probs, logits, fn, limited.params);
  }
  SY_DISPATCH(ctx, tokens_choose_logits, ctx, r, probs, logits, fn, p);
}

void tokens_gate(Ctx& ctx, Tensor& group, Tensor& weight, Tensor& probs, const Tensor& logits, ScoreFn fn,
                 const TokensChooseParams& p) {
  TokensChooseParams choice = p;  // (capacity, dropless, priority and padded are not read)
  choice.padded = choice.dropless = false;
  check_gating(ctx, probs, logits, choice, "tokens_gate");
  const int64_t n = logits.dim(0) * p.k;
  check_dtype(group, DType::i32, "gate groups");
  check_shape(group, {n}, "gate groups");
  check_dtype(weight, DType::f32, "gate weights");
  check_shape(weight, {n}, "gate weights");
  check_device(ctx, "tokens_gate", {&group, &weight});
  if (p.group_limit.on()) {  // p first, then the gating on the limited keys
    const LimitedChoice limited(ctx, probs, logits, fn, p);
    return tokens_gate(ctx, group, weight, probs, logits, fn, limited.params);
  }
  SY_DISPATCH(ctx, tokens_gate, ctx, group, weight, probs, logits, fn, p);
}

void groups_choose(Ctx& ctx, Route& r, const Tensor& scores, int64_t capacity, int64_t segment, bool own_groups) {
  check_matrix(scores, "group scores");
  const int64_t N = scores.dim(0), S = segment > 0 ? segment : N;
  SY_CHECK(capacity >= 0, "capacity " << capacity);
  SY_CHECK(N % std::max<int64_t>(S, 1) == 0, "groups_choose: " << N << " items in segments of " << S);
  check_device(ctx, "groups_choose", {&scores});
  SY_DISPATCH(ctx, groups_choose, ctx, r, scores, capacity, segment, own_groups);
}

void threshold_route(Ctx& ctx, Route& r, const Tensor& scores, float tau) {
  check_dtype(scores, DType::f32, "threshold scores");
  SY_CHECK(scores.ndim() == 1, "threshold scores " << shape_str(scores.shape()) << " are not (N)");
  check_device(ctx, "threshold_route", {&scores});
  SY_DISPATCH(ctx, threshold_route, ctx, r, scores, tau);
}

void apply_budget(Ctx& ctx, Route& r, const Tensor& scores, const BudgetParams& p) {
  check_shape(scores, {r.num_items, r.num_groups}, "budget scores");
  check_dtype(scores, DType::f32, "budget scores");
  SY_CHECK(!r.padded, "budget: a padded route's offsets are fixed; apply_budget renumbers them");
  SY_CHECK(static_cast<int64_t>(p.cost.size()) == r.num_groups,
           "budget: " << p.cost.size() << " costs for " << r.num_groups << " groups");
  for (float c : p.cost) SY_CHECK(c >= 0 && std::isfinite(c), "budget: cost " << c << " (must be finite, >= 0)");
  SY_CHECK(p.budget >= 0 && std::isfinite(p.budget), "budget " << p.budget << " (must be finite, >= 0)");
  SY_CHECK(!p.causal || p.segment == 0 || (p.segment > 0 && r.num_items % p.segment == 0),
           "causal budget: " << r.num_items << " items in runs of " << p.segment);
  check_device(ctx, "apply_budget", {&scores, &r.group, &r.slot, &r.count, &r.offset});
  SY_DISPATCH(ctx, apply_budget, ctx, r, scores, p);
}

void pad_to_largest(Ctx& ctx, Route& r, int64_t multiple) {
  SY_CHECK(!r.padded, "pad_to_largest: the route is padded already (its counts were not read back)");
  SY_CHECK(multiple >= 1, "pad_to_largest: a multiple of " << multiple << " rows (must be >= 1)");
  SY_CHECK(static_cast<int64_t>(r.host_offset.size()) == r.num_groups + 1,
           "pad_to_largest: " << r.host_offset.size() << " host offsets for " << r.num_groups << " groups");
  check_device(ctx, "pad_to_largest", {&r.count, &r.offset});
  SY_DISPATCH(ctx, pad_to_largest, ctx, r, multiple);
}

void route_weights_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dweight, const Tensor& probs,
                            const Route& r, bool renormalized) {
  check_shape(probs, {r.num_items, r.num_groups}, "route probs");
  check_shape(dprobs, probs.shape(), "route dprobs");
  check_shape(dweight, {r.assignments()}, "route dweight");
  check_device(ctx, "route_weights_backward", {&dprobs, &dweight, &probs, &r.group});
  SY_DISPATCH(ctx, route_weights_backward, ctx, dprobs, dweight, probs, r, renormalized);
}

void update_balance_bias(Ctx& ctx, Tensor& bias, const Tensor& load, float rate) {
  check_dtype(bias, DType::f32, "balance bias");
  check_dtype(load, DType::f64, "balance load");
  SY_CHECK(bias.ndim() == 1 && (load.ndim() == 1 || load.ndim() == 2) && load.dim(load.ndim() - 1) == bias.numel(),
           "balance bias " << shape_str(bias.shape()) << " and load " << shape_str(load.shape())
                           << ": the load must be (G) or (M, G) for a bias of G");
  check_device(ctx, "update_balance_bias", {&bias, &load});
  SY_DISPATCH(ctx, update_balance_bias, ctx, bias, load, rate);
}

}  // namespace sy::ops
