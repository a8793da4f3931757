#include "runtime/depth_router.h"

#include <algorithm>

#include "ops/depth_gate.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/router_loss.h"

namespace sy {

namespace {
bool straight_through(const switchyard::DepthConfig& c) { return c.weight() == switchyard::DepthConfig::STRAIGHT_THROUGH; }
}  // namespace

DepthRouter::DepthRouter(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C,
                         const switchyard::DepthConfig& cfg, Rng& rng, float std)
    : ctx_(ctx), cfg_(cfg), C_(C) {
  w_ = ps.add(name + ".router.w", {C, 1}, rng, std, false);
  wp_ = ps.add(name + ".predictor.w", {C, 1}, rng, std, false);
  bp_ = ps.add(name + ".predictor.b", {1}, rng, 0.f, false);
}

const ops::Route& DepthRouter::select(const Tensor& x, int64_t B, int64_t T, bool training) {
  const int64_t N = B * T;
  training_ = training;
  x_ = x;
  r_ = Tensor::empty({N, 1}, DType::f32, ctx_);
  Tensor pl = Tensor::empty({N, 1}, DType::f32, ctx_);
  ops::matmul_forward(ctx_, {r_, x, w_->value, Tensor()});
  ops::matmul_forward(ctx_, {pl, x, wp_->value, bp_->value});
  r_ = r_.reshape({N});
  sig_ = Tensor::empty({N}, DType::f32, ctx_);
  pred_ = Tensor::empty({N}, DType::f32, ctx_);
  ops::sigmoid(ctx_, sig_, r_);
  ops::sigmoid(ctx_, pred_, pl.reshape({N}));

  if (training || !cfg_.predictor_at_eval()) {
    const int64_t C = ops::ceil_capacity(cfg_.capacity(), T);
    ops::groups_choose(ctx_, route_, r_.reshape({N, 1}), C, T);
    // groups_choose keeps min(C, T) items of every run of T whatever the
    // scores (ops/routing.h; ops/cpu/routing.cc and ops/cuda/routing.cu
    // alike): the count per sequence needs no look at the device. The route's row count is host-side
    // too; checking it against that count costs no copy.
    per_sequence_ = std::clamp<int64_t>(C, 0, T);
    SY_CHECK(route_.rows() == B * per_sequence_, "depth routing: top-" << C << " of " << B << " sequences of " << T
                                                     << " tokens gave " << route_.rows() << " rows");
  } else {
    ops::threshold_route(ctx_, route_, pred_, cfg_.tau());
    per_sequence_ = -1;
  }
  // Combine weights: 1 (straight-through) or sigmoid(r).
  weight_ = Tensor::empty({N}, DType::f32, ctx_);
  ops::depth_gate_forward(ctx_, weight_, sig_, route_, straight_through(cfg_));

  stats_ = DepthStats{};
  stats_.processed = static_cast<double>(route_.rows()) / std::max<int64_t>(1, N);
  if (training) {
    Tensor dl = Tensor::empty({N}, DType::f32, ctx_);
    const ops::PredictorStats ps = ops::predictor_loss(ctx_, dl, pred_, route_, cfg_.tau());
    stats_.predictor_bce = ps.bce;
    stats_.predictor_accuracy = ps.accuracy;
  }
  Tensor scratch = Tensor::zeros({N, 1}, DType::f32, ctx_);
  stats_.budget_loss = ops::budget_loss(ctx_, scratch, sig_.reshape({N, 1}), {}, cfg_.budget(), cfg_.budget_coef());
  return route_;
}

std::vector<int64_t> DepthRouter::per_sequence(int64_t B, int64_t T) const {
  if (per_sequence_ >= 0) return std::vector<int64_t>(B, per_sequence_);
  // The threshold route (the causal predictor at evaluation): each token's
  // choice is its own, so the counts may differ per sequence and only the device
  // knows them. One copy of the route's groups, needed to size each
  // sequence's sub-batch; evaluation only, never in a training step.
  std::vector<int64_t> n(B, 0);
  const std::vector<int32_t> group = route_.group.to_vector<int32_t>();
  for (int64_t i = 0; i < B * T; ++i) n[i / T] += group[i] >= 0;
  return n;
}

Tensor DepthRouter::positions(int64_t T) const {
  Tensor pos = Tensor::empty({route_.rows()}, DType::i32, ctx_);
  ops::dispatch_positions(ctx_, pos, route_, T);
  return pos;
}

Tensor DepthRouter::combine(const Tensor& x, const Tensor& z) {
  z_ = z;
  Tensor y = Tensor::empty(x.shape(), DType::f32, ctx_);
  ops::residual_combine_forward(ctx_, y, x, z, weight_, route_);
  return y;
}

Tensor DepthRouter::backward(const Tensor& dy, Tensor& dx) {
  SY_CHECK(training_, "depth router backward after an evaluation forward");
  const int64_t N = x_.dim(0);
  Tensor dz = Tensor::zeros(z_.shape(), DType::f32, ctx_);
  Tensor dw = Tensor::empty({N}, DType::f32, ctx_);
  ops::residual_combine_backward(ctx_, dx, dz, dw, dy, x_, z_, weight_, route_);
  Tensor dbudget = Tensor::zeros({N, 1}, DType::f32, ctx_);
  ops::budget_loss(ctx_, dbudget, sig_.reshape({N, 1}), {}, cfg_.budget(), cfg_.budget_coef());
  Tensor dr = Tensor::empty({N, 1}, DType::f32, ctx_);
  Tensor drv = dr.reshape({N});
  ops::depth_gate_backward(ctx_, drv, dw, dbudget.reshape({N}), sig_, route_, straight_through(cfg_));
  ops::matmul_backward(ctx_, {&dx, &w_->grad, nullptr, dr, x_, w_->value});
  // Predictor: BCE against the top-k choice; d/dlogit = p - target. No trunk gradient.
  Tensor dl = Tensor::empty({N, 1}, DType::f32, ctx_);
  Tensor dlv = dl.reshape({N});
  ops::predictor_loss(ctx_, dlv, pred_, route_, cfg_.tau());
  ops::matmul_backward(ctx_, {nullptr, &wp_->grad, &bp_->grad, dl, x_, wp_->value});
  return dz;
}

}  // namespace sy
