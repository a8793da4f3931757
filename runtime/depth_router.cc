#include "runtime/depth_router.h"

#include <cmath>

#include "ops/matmul.h"
#include "ops/router_loss.h"

namespace sy {

namespace {
float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }
bool straight_through(const switchyard::DepthConfig& c) {
  return c.weight() == switchyard::DepthConfig::STRAIGHT_THROUGH;
}
}  // namespace

DepthRouter::DepthRouter(ParamStore& ps, const std::string& name, int64_t C,
                         const switchyard::DepthConfig& cfg, Rng& rng, float std)
    : cfg_(cfg), C_(C) {
  w_ = ps.add(name + ".router.w", {C, 1}, rng, std, false);
  wp_ = ps.add(name + ".predictor.w", {C, 1}, rng, std, false);
  bp_ = ps.add(name + ".predictor.b", {1}, rng, 0.f, false);
}

const ops::Route& DepthRouter::select(const Tensor& x, int64_t B, int64_t T, bool training) {
  const int64_t N = B * T;
  training_ = training;
  x_ = x;
  r_.assign(N, 0.f);
  pred_.assign(N, 0.f);
  ops::gemm_rows(r_.data(), x.f32(), w_->value.f32(), nullptr, N, C_, 1);
  ops::gemm_rows(pred_.data(), x.f32(), wp_->value.f32(), bp_->value.f32(), N, C_, 1);
  sig_.resize(N);
  for (int64_t i = 0; i < N; ++i) sig_[i] = sigmoid(r_[i]), pred_[i] = sigmoid(pred_[i]);

  if (training || !cfg_.predictor_at_eval()) {
    route_ = ops::groups_choose(r_, N, 1, ops::ceil_capacity(cfg_.capacity(), T), T);
  } else {
    route_ = ops::threshold_route(pred_, N, cfg_.tau());
  }
  // Combine weights: 1 (straight-through) or sigmoid(r).
  weight_.assign(N, 0.f);
  for (int64_t i = 0; i < N; ++i)
    if (route_.group[i] >= 0) weight_[i] = straight_through(cfg_) ? sig_[i] / sig_[i] : sig_[i];

  stats_ = DepthStats{};
  stats_.processed = static_cast<double>(route_.rows()) / std::max<int64_t>(1, N);
  if (training) {
    double bce = 0;
    int64_t agree = 0;
    for (int64_t i = 0; i < N; ++i) {
      const bool chosen = route_.group[i] >= 0;
      const double p = std::min(std::max<double>(pred_[i], 1e-7), 1 - 1e-7);
      bce -= chosen ? std::log(p) : std::log(1 - p);
      agree += (pred_[i] > cfg_.tau()) == chosen;
    }
    stats_.predictor_bce = bce / std::max<int64_t>(1, N);
    stats_.predictor_accuracy = static_cast<double>(agree) / std::max<int64_t>(1, N);
  }
  std::vector<float> scratch;
  stats_.budget_loss = ops::budget_loss(scratch, sig_, N, 1, {}, cfg_.budget(), cfg_.budget_coef());
  return route_;
}

std::vector<int64_t> DepthRouter::per_sequence(int64_t B, int64_t T) const {
  std::vector<int64_t> n(B, 0);
  for (int64_t i = 0; i < B * T; ++i) n[i / T] += route_.group[i] >= 0;
  return n;
}

Tensor DepthRouter::combine(const Tensor& x, const Tensor& z) {
  z_ = z;
  Tensor y = x.clone();
  const int64_t N = x.dim(0);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t row = route_.row(i);
    if (row < 0) continue;
    const float w = weight_[i];
    float* yr = y.f32() + i * C_;
    const float* zr = z.f32() + row * C_;
    for (int64_t c = 0; c < C_; ++c) yr[c] = (1.f - w) * yr[c] + w * zr[c];
  }
  return y;
}

Tensor DepthRouter::backward(const Tensor& dy, Tensor& dx) {
  SY_CHECK(training_, "depth router backward after an evaluation forward");
  const int64_t N = x_.dim(0);
  Tensor dz(z_.shape());
  std::vector<float> dr(N, 0.f), dbudget;
  ops::budget_loss(dbudget, sig_, N, 1, {}, cfg_.budget(), cfg_.budget_coef());
  for (int64_t i = 0; i < N; ++i) {
    const float* g = dy.f32() + i * C_;
    float* dxr = dx.f32() + i * C_;
    const int64_t row = route_.row(i);
    const float s = sig_[i];
    dr[i] = dbudget[i] * s * (1.f - s);
    if (row < 0) {
      for (int64_t c = 0; c < C_; ++c) dxr[c] += g[c];
      continue;
    }
    const float w = weight_[i];
    const float* xr = x_.f32() + i * C_;
    const float* zr = z_.f32() + row * C_;
    float* dzr = dz.f32() + row * C_;
    float dw = 0;
    for (int64_t c = 0; c < C_; ++c) {
      dzr[c] = w * g[c];
      dxr[c] += (1.f - w) * g[c];
      dw += g[c] * (zr[c] - xr[c]);
    }
    dr[i] += dw * (straight_through(cfg_) ? 1.f - s : s * (1.f - s));
  }
  ops::gemm_rows_backward(dx.f32(), w_->grad.f32(), nullptr, dr.data(), x_.f32(), w_->value.f32(), N, C_, 1);
  // Predictor: BCE against the top-k choice; d/dlogit = p - target. No trunk gradient.
  std::vector<float> dp(N);
  for (int64_t i = 0; i < N; ++i) dp[i] = (pred_[i] - (route_.group[i] >= 0 ? 1.f : 0.f)) / N;
  ops::gemm_rows_backward(nullptr, wp_->grad.f32(), bp_->grad.f32(), dp.data(), x_.f32(),
                          wp_->value.f32(), N, C_, 1);
  return dz;
}

}  // namespace sy
