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

  if (training || !cfg_.predictor_at_eval())
    ops::groups_choose(ctx_, route_, r_.reshape({N, 1}), ops::ceil_capacity(cfg_.capacity(), T), T);
  else
    ops::threshold_route(ctx_, route_, pred_, cfg_.tau());
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
  std::vector<int64_t> n(B, 0);
  const std::vector<int32_t> group = route_.group.to_vector<int32_t>();
  for (int64_t i = 0; i < B * T; ++i) n[i / T] += group[i] >= 0;
  return n;
}

std::vector<int32_t> DepthRouter::positions(int64_t T) const {
  const std::vector<int32_t> group = route_.group.to_vector<int32_t>();
  std::vector<int32_t> pos;
  for (int64_t i = 0; i < static_cast<int64_t>(group.size()); ++i)
    if (group[i] >= 0) pos.push_back(static_cast<int32_t>(i % T));
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
