#include "ops/router_loss.h"

#include <algorithm>

#include "ops/backend.h"

namespace sy::ops {

namespace {
// Layout of the sums tensor: [chosen (G) | prob (G) | kept (G) | cut (G) | assigned | items | dropped |
// unserved | entropy | budget_dropped].
enum Tail { kAssigned, kItems, kDropped, kUnserved, kEntropy, kBudgetDropped, kTail };

// A loss's value slot(s): f64 (n), on the device of the other tensors.
void check_value(const Tensor& t, int64_t n, const char* what) {
  check_shape(t, {n}, what);
  check_dtype(t, DType::f64, what);
}

void check_probs(const Tensor& t, const char* what) {
  check_dtype(t, DType::f32, what);
  SY_CHECK(t.ndim() == 2, what << " " << shape_str(t.shape()) << " is not (N, G)");
}
}  // namespace

int64_t routing_sums_size(int64_t G) { return 4 * G + kTail; }

void routing_sums(Ctx& ctx, Tensor& sums, const Tensor& probs, const Route& r, int64_t i0, int64_t i1) {
  check_shape(probs, {r.num_items, r.num_groups}, "routing probs");
  check_shape(sums, {routing_sums_size(r.num_groups)}, "routing sums");
  check_dtype(sums, DType::f64, "routing sums");
  if (i1 < 0) i1 = r.num_items;
  SY_CHECK(0 <= i0 && i0 <= i1 && i1 <= r.num_items, "routing sums over items [" << i0 << ", " << i1 << ")");
  check_device(ctx, "routing_sums", {&sums, &probs, &r.group});
  SY_DISPATCH(ctx, routing_sums, ctx, sums, probs, r, i0, i1);
}

RoutingTotals RoutingTotals::read(const Tensor& sums, int64_t G) {
  const std::vector<double> s = sums.to_vector<double>();
  SY_CHECK(static_cast<int64_t>(s.size()) == routing_sums_size(G), "routing sums of " << s.size() << " for " << G << " groups");
  RoutingTotals t;
  t.chosen.assign(s.begin(), s.begin() + G);
  t.prob.assign(s.begin() + G, s.begin() + 2 * G);
  t.kept.assign(s.begin() + 2 * G, s.begin() + 3 * G);
  t.cut.assign(s.begin() + 3 * G, s.begin() + 4 * G);
  const double* tail = s.data() + 4 * G;
  t.assigned = tail[kAssigned];
  t.items = tail[kItems];
  t.dropped = tail[kDropped];
  t.unserved = tail[kUnserved];
  t.entropy = tail[kEntropy];
  t.budget_dropped = tail[kBudgetDropped];
  return t;
}

double RoutingTotals::realized_cost(const std::vector<float>& c) const {
  double s = 0;
  for (size_t g = 0; g < kept.size() && g < c.size(); ++g) s += kept[g] * c[g];
  return s / std::max(1.0, items);
}

double RoutingTotals::cost_before_budget(const std::vector<float>& c) const {
  double s = 0;
  for (size_t g = 0; g < kept.size() && g < c.size(); ++g) s += (kept[g] + cut[g]) * c[g];
  return s / std::max(1.0, items);
}

double RoutingTotals::expected_cost(const std::vector<float>& c) const {
  double pc = 0, p = 0;
  for (size_t g = 0; g < prob.size() && g < c.size(); ++g) pc += prob[g] * c[g], p += prob[g];
  return p > 0 ? assigned / std::max(1.0, items) * pc / p : 0.0;
}

std::vector<double> RoutingTotals::f() const {
  std::vector<double> f(chosen.size());
  for (size_t g = 0; g < f.size(); ++g) f[g] = chosen[g] / std::max(1.0, assigned);
  return f;
}

std::vector<double> RoutingTotals::P() const {
  std::vector<double> P(prob.size());
  for (size_t g = 0; g < P.size(); ++g) P[g] = prob[g] / std::max(1.0, items);
  return P;
}

void load_balance_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& sums, float alpha) {
  if (dprobs.defined()) {
    check_probs(dprobs, "load balance dprobs");
    check_shape(sums, {routing_sums_size(dprobs.dim(1))}, "load balance routing sums");
  }
  SY_CHECK(sums.ndim() == 1 && sums.dim(0) >= kTail && (sums.dim(0) - kTail) % 4 == 0,
           "load balance routing sums " << shape_str(sums.shape()) << " are not routing_sums' (4 G + " << kTail
                                        << ")");
  check_dtype(sums, DType::f64, "load balance routing sums");
  check_value(value, 1, "load balance value");
  check_device(ctx, "load_balance_loss", {&dprobs, &value, &sums});
  SY_DISPATCH(ctx, load_balance_loss, ctx, dprobs, value, sums, alpha);
}

void load_balance_loss_grouped(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const Route& r,
                               int64_t group, float alpha) {
  check_shape(probs, {r.num_items, r.num_groups}, "load balance probs");
  check_shape(dprobs, probs.shape(), "load balance dprobs");
  check_value(value, 1, "load balance value");
  SY_CHECK(group > 0 && r.num_items % group == 0,
           "load balance groups of " << group << " items over " << r.num_items << " items");
  check_device(ctx, "load_balance_loss_grouped", {&dprobs, &value, &probs, &r.group});
  SY_DISPATCH(ctx, load_balance_loss_grouped, ctx, dprobs, value, probs, r, group, alpha);
}

void z_loss(Ctx& ctx, Tensor& dlogits, Tensor& value, const Tensor& logits, float beta) {
  check_probs(logits, "z-loss logits");
  if (dlogits.defined()) check_shape(dlogits, logits.shape(), "z-loss dlogits");
  check_value(value, 1, "z-loss value");
  check_device(ctx, "z_loss", {&dlogits, &value, &logits});
  SY_DISPATCH(ctx, z_loss, ctx, dlogits, value, logits, beta);
}

void routing_sums_logits(Ctx& ctx, Tensor& sums, const Tensor& logits, ScoreFn fn, const Route& r) {
  check_probs(logits, "routing logits");
  check_shape(logits, {r.num_items, r.num_groups}, "routing logits");
  check_shape(sums, {routing_sums_size(r.num_groups)}, "routing sums");
  check_dtype(sums, DType::f64, "routing sums");
  check_device(ctx, "routing_sums_logits", {&sums, &logits, &r.group, &r.slot});
  SY_DISPATCH(ctx, routing_sums_logits, ctx, sums, logits, fn, r);
}

void router_backward(Ctx& ctx, Tensor& dlogits, const RouterBackwardArgs& a) {
  const Route& r = a.route;
  check_probs(a.logits, "router logits");
  check_shape(a.logits, {r.num_items, r.num_groups}, "router logits");
  check_shape(dlogits, a.logits.shape(), "router dlogits");
  check_dtype(dlogits, DType::f32, "router dlogits");
  check_shape(a.dweight, {r.assignments()}, "router dweight");
  check_dtype(a.dweight, DType::f32, "router dweight");
  SY_CHECK(a.alpha == 0.f || a.sums, "router_backward: a load-balance coefficient " << a.alpha << " without routing sums");
  if (a.sums) {
    check_shape(*a.sums, {routing_sums_size(r.num_groups)}, "router routing sums");
    check_dtype(*a.sums, DType::f64, "router routing sums");
  }
  check_device(ctx, "router_backward", {&dlogits, &a.logits, &a.dweight, &r.group, a.sums});
  SY_DISPATCH(ctx, router_backward, ctx, dlogits, a);
}

float realized_budget_loss(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const Route& r,
                           const RealizedBudgetArgs& a) {
  check_shape(probs, {r.num_items, r.num_groups}, "budget probs");
  check_shape(dprobs, probs.shape(), "budget dprobs");
  SY_CHECK(static_cast<int64_t>(a.cost.size()) == r.num_groups,
           "budget: " << a.cost.size() << " costs for " << r.num_groups << " groups");
  SY_CHECK(!a.sums == !a.value, "realized budget: routing sums and a value slot go together");
  if (a.sums) {
    check_shape(*a.sums, {routing_sums_size(r.num_groups)}, "realized budget routing sums");
    check_dtype(*a.sums, DType::f64, "realized budget routing sums");
    check_value(*a.value, 1, "realized budget value");
  }
  check_device(ctx, "realized_budget_loss", {&dprobs, &probs, &r.group, &r.slot, a.sums, a.value});
  SY_DISPATCH(ctx, realized_budget_loss, ctx, dprobs, probs, r, a);
}

void budget_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const std::vector<float>& cost,
                 float budget, float lambda) {
  check_probs(probs, "budget probs");
  check_shape(dprobs, probs.shape(), "budget dprobs");
  check_value(value, 2, "budget value");
  SY_CHECK(cost.empty() || static_cast<int64_t>(cost.size()) == probs.dim(1),
           "budget: " << cost.size() << " costs for " << probs.dim(1) << " groups");
  check_device(ctx, "budget_loss", {&dprobs, &value, &probs});
  SY_DISPATCH(ctx, budget_loss, ctx, dprobs, value, probs, cost, budget, lambda);
}

}  // namespace sy::ops
