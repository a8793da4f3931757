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

DepthStatsBuffer::DepthStatsBuffer(Ctx& ctx, int64_t routers)
    : dev_(Tensor::zeros({routers, kFields}, DType::f64, ctx)) {}

Tensor DepthStatsBuffer::row(int64_t j) const {
  SY_CHECK(0 <= j && j < routers(), "depth statistics row " << j << " of " << routers());
  return dev_.rows(j, j + 1).reshape({kFields});
}

const double* DepthStatsBuffer::host_row(int64_t j) {
  SY_CHECK(0 <= j && j < routers(), "depth statistics row " << j << " of " << routers());
  if (!fresh_) {
    host_ = dev_.to_vector<double>();  // the one device-to-host copy, every router's row
    fresh_ = true;
    ++reads_;
  }
  return host_.data() + j * kFields;
}

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

  processed_ = static_cast<double>(route_.rows()) / std::max<int64_t>(1, N);
  selected_ = true;
  // Statistics and the gradients of the router's own losses, on the device:
  // written into this router's row of the statistics buffer, read only when
  // reported (stats()). The predictor learns in training only.
  if (!stats_buf_) stats_buf_ = std::make_shared<DepthStatsBuffer>(ctx_, 1);
  Tensor row = stats_buf_->row(stats_row_);
  dl_ = Tensor();
  if (training) {
    dl_ = Tensor::empty({N}, DType::f32, ctx_);
    Tensor predictor = row.rows(DepthStatsBuffer::kBce, DepthStatsBuffer::kAccuracy + 1);
    ops::predictor_loss(ctx_, dl_, predictor, pred_, route_, cfg_.tau());
  }
  dbudget_ = Tensor();
  if (cfg_.budget_coef() != 0) {
    dbudget_ = Tensor::zeros({N, 1}, DType::f32, ctx_);
    Tensor budget = row.rows(DepthStatsBuffer::kBudgetLoss, DepthStatsBuffer::kExpectedCost + 1);
    ops::budget_loss(ctx_, dbudget_, budget, sig_.reshape({N, 1}), {}, cfg_.budget(), cfg_.budget_coef());
  }
  stats_buf_->written();
  return route_;
}

DepthStats DepthRouter::stats() const {
  DepthStats st;
  st.processed = processed_;
  const bool budget = cfg_.budget_coef() != 0;
  if (!selected_ || !(training_ || budget)) return st;  // nothing on the device to report
  const double* row = stats_buf_->host_row(stats_row_);
  if (training_) {
    st.predictor_bce = row[DepthStatsBuffer::kBce];
    st.predictor_accuracy = row[DepthStatsBuffer::kAccuracy];
  }
  if (budget) st.budget_loss = row[DepthStatsBuffer::kBudgetLoss];
  return st;
}

void DepthRouter::share_stats(std::shared_ptr<DepthStatsBuffer> buffer, int64_t row) {
  SY_CHECK(buffer && 0 <= row && row < buffer->routers(),
           "depth router statistics: row " << row << " of a buffer of " << (buffer ? buffer->routers() : 0));
  stats_buf_ = std::move(buffer);
  stats_row_ = row;
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
  // The budget loss's gradient from select(); zero at coefficient 0.
  const Tensor dbudget = dbudget_.defined() ? dbudget_ : Tensor::zeros({N, 1}, DType::f32, ctx_);
  Tensor dr = Tensor::empty({N, 1}, DType::f32, ctx_);
  Tensor drv = dr.reshape({N});
  ops::depth_gate_backward(ctx_, drv, dw, dbudget.reshape({N}), sig_, route_, straight_through(cfg_));
  ops::matmul_backward(ctx_, {&dx, &w_->grad, nullptr, dr, x_, w_->value});
  // Predictor: BCE against the top-k choice; d/dlogit = (p - target) / N from
  // select(). No trunk gradient.
  ops::matmul_backward(ctx_, {nullptr, &wp_->grad, &bp_->grad, dl_.reshape({N, 1}), x_, wp_->value});
  return dz;
}

}  // namespace sy
