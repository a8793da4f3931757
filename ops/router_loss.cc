#include "ops/router_loss.h"

#include <algorithm>

#include "ops/backend.h"

namespace sy::ops {

namespace {
// Layout of the sums tensor: [chosen (G) | prob (G) | assigned | items | dropped | unserved | entropy].
enum Tail { kAssigned, kItems, kDropped, kUnserved, kEntropy, kTail };

void check_probs(const Tensor& t, const char* what) {
  check_dtype(t, DType::f32, what);
  SY_CHECK(t.ndim() == 2, what << " " << shape_str(t.shape()) << " is not (N, G)");
}
}  // namespace

int64_t routing_sums_size(int64_t G) { return 2 * G + kTail; }

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
  const double* tail = s.data() + 2 * G;
  t.assigned = tail[kAssigned];
  t.items = tail[kItems];
  t.dropped = tail[kDropped];
  t.unserved = tail[kUnserved];
  t.entropy = tail[kEntropy];
  return t;
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

float load_balance_loss(Ctx& ctx, Tensor& dprobs, const std::vector<double>& f, const std::vector<double>& P,
                        float alpha) {
  check_probs(dprobs, "load balance dprobs");
  SY_CHECK(static_cast<int64_t>(f.size()) == dprobs.dim(1) && P.size() == f.size(),
           "load balance: f of " << f.size() << ", P of " << P.size() << " for " << dprobs.dim(1) << " groups");
  check_device(ctx, "load_balance_loss", {&dprobs});
  SY_DISPATCH(ctx, load_balance_loss, ctx, dprobs, f, P, alpha);
}

float load_balance_loss_grouped(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const Route& r, int64_t group,
                                float alpha) {
  check_shape(probs, {r.num_items, r.num_groups}, "load balance probs");
  check_shape(dprobs, probs.shape(), "load balance dprobs");
  SY_CHECK(group > 0 && r.num_items % group == 0,
           "load balance groups of " << group << " items over " << r.num_items << " items");
  check_device(ctx, "load_balance_loss_grouped", {&dprobs, &probs, &r.group});
  SY_DISPATCH(ctx, load_balance_loss_grouped, ctx, dprobs, probs, r, group, alpha);
}

float z_loss(Ctx& ctx, Tensor& dlogits, const Tensor& logits, float beta) {
  check_probs(logits, "z-loss logits");
  check_shape(dlogits, logits.shape(), "z-loss dlogits");
  check_device(ctx, "z_loss", {&dlogits, &logits});
  SY_DISPATCH(ctx, z_loss, ctx, dlogits, logits, beta);
}

float budget_loss(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const std::vector<float>& cost, float budget,
                  float lambda, float* expected) {
  check_probs(probs, "budget probs");
  check_shape(dprobs, probs.shape(), "budget dprobs");
  SY_CHECK(cost.empty() || static_cast<int64_t>(cost.size()) == probs.dim(1),
           "budget: " << cost.size() << " costs for " << probs.dim(1) << " groups");
  check_device(ctx, "budget_loss", {&dprobs, &probs});
  SY_DISPATCH(ctx, budget_loss, ctx, dprobs, probs, cost, budget, lambda, expected);
}

}  // namespace sy::ops
