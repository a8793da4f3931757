#include "ops/depth_gate.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const char* op, const Route& r, std::initializer_list<const Tensor*> ts) {
  SY_CHECK(r.k == 1 && r.num_groups == 1, op << ": a route of k = " << r.k << " over " << r.num_groups << " groups");
  for (const Tensor* t : ts) check_shape(*t, {r.num_items}, op);
  check_device(ctx, op, ts);
  check_device(ctx, op, {&r.group, &r.slot});
}
}  // namespace

void depth_gate_forward(Ctx& ctx, Tensor& w, const Tensor& s, const Route& r, bool straight_through) {
  check(ctx, "depth_gate_forward", r, {&w, &s});
  SY_DISPATCH(ctx, depth_gate_forward, ctx, w, s, r, straight_through);
}

void depth_gate_backward(Ctx& ctx, Tensor& dr, const Tensor& dw, const Tensor& dbudget, const Tensor& s,
                         const Route& r, bool straight_through) {
  check(ctx, "depth_gate_backward", r, {&dr, &dw, &dbudget, &s});
  SY_DISPATCH(ctx, depth_gate_backward, ctx, dr, dw, dbudget, s, r, straight_through);
}

void predictor_loss(Ctx& ctx, Tensor& dl, Tensor& stats, const Tensor& p, const Route& r, float tau) {
  check(ctx, "predictor_loss", r, {&dl, &p});
  check_shape(stats, {2}, "predictor_loss stats");
  check_dtype(stats, DType::f64, "predictor_loss stats");
  check_device(ctx, "predictor_loss", {&stats});
  SY_DISPATCH(ctx, predictor_loss, ctx, dl, stats, p, r, tau);
}

}  // namespace sy::ops
