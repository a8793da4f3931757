#include "runtime/moe_layer.h"

#include <cmath>
#include <numeric>

#include "ops/dispatch.h"
#include "ops/expert_ffn.h"
#include "ops/matmul.h"
#include "ops/router_loss.h"

namespace sy {

namespace {
ops::ScoreFn score_fn(const switchyard::MoeConfig& c) {
  return c.score_function() == switchyard::MoeConfig::SIGMOID ? ops::ScoreFn::sigmoid
                                                              : ops::ScoreFn::softmax;
}
bool expert_choice(const switchyard::MoeConfig& c) {
  return c.router() == switchyard::MoeConfig::EXPERT_CHOICE;
}
}  // namespace

MoeLayer::MoeLayer(ParamStore& ps, const std::string& name, int64_t C,
                   const switchyard::MoeConfig& cfg, int64_t default_hidden, Rng& rng, float std,
                   float out_std, uint64_t seed, ParallelContext* par)
    : cfg_(cfg), C_(C), G_(cfg.num_experts()),
      H_(cfg.expert_hidden() > 0 ? cfg.expert_hidden() : default_hidden), El_(G_), par_(par),
      name_(name), rng_(seed + (par ? par->rank() : 0)) {
  const int ep = par ? par->ep_size : 1;
  SY_CHECK(G_ % ep == 0, "moe.num_experts = " << G_ << " over expert_parallel = " << ep);
  El_ = G_ / ep;
  const int64_t e0 = (par ? par->shard() : 0) * El_, e1 = e0 + El_;
  if (ep > 1) exchange_ = std::make_unique<ExpertExchange>(*par->ep, G_, C_);
  wg_ = ps.add(name + ".router.w", {C_, G_}, rng, std, false);
  w1_ = ps.add_rows(name + ".experts.w1", {G_, C_, H_}, e0, e1, rng, std, true);
  b1_ = ps.add_rows(name + ".experts.b1", {G_, H_}, e0, e1, rng, 0.f, false);
  w2_ = ps.add_rows(name + ".experts.w2", {G_, H_, C_}, e0, e1, rng, out_std, true);
  b2_ = ps.add_rows(name + ".experts.b2", {G_, C_}, e0, e1, rng, 0.f, false);
  for (Param* p : {w1_, b1_, w2_, b2_}) p->expert = true;
  if (cfg.shared_expert())
    shared_ = std::make_unique<Mlp>(ps, name + ".shared", C_, H_, rng, std, out_std);
  bias_.assign(G_, 0.f);
  cost_.assign(cfg.expert_cost().begin(), cfg.expert_cost().end());
}

Tensor MoeLayer::forward(const Tensor& x) {
  const int64_t N = x.dim(0);
  x_ = x;
  // Router input, with multiplicative jitter in training.
  xr_ = x;
  noise_.clear();
  if (training_ && cfg_.jitter() > 0) {
    xr_ = x.clone();
    noise_.resize(x.numel());
    float* p = xr_.f32();
    for (int64_t i = 0; i < xr_.numel(); ++i) {
      noise_[i] = static_cast<float>(1.0 + cfg_.jitter() * (2.0 * rng_.uniform() - 1.0));
      p[i] *= noise_[i];
    }
  }
  logits_.assign(N * G_, 0.f);
  ops::gemm_rows(logits_.data(), xr_.f32(), wg_->value.f32(), nullptr, N, C_, G_);
  // Noisy gating: the noise is a constant offset, so backward is unchanged.
  const bool noisy = training_ && cfg_.router_noise() > 0;
  const bool gumbel = noisy && cfg_.router_noise_kind() == switchyard::MoeConfig::GUMBEL;
  if (noisy && !gumbel)
    for (float& l : logits_) l += static_cast<float>(cfg_.router_noise() * rng_.normal());
  // Gumbel selection keys: logits + beta * (-log(-log u)); argmax over them
  // picks g with probability softmax(l / beta)_g (Gumbel-max). Selection only:
  // backward never sees them.
  std::vector<float> keys;
  if (gumbel) {
    keys.resize(N * G_);
    for (int64_t a = 0; a < N * G_; ++a) {
      const double u = std::max(rng_.uniform(), 1e-300);
      keys[a] = logits_[a] - static_cast<float>(cfg_.router_noise() * std::log(-std::log(u)));
    }
  }
  const ops::ScoreFn fn = score_fn(cfg_);
  ops::router_scores(probs_, logits_.data(), N, G_, fn);

  const float cf = training_ ? cfg_.capacity_factor() : cfg_.capacity_factor_eval();
  if (expert_choice(cfg_)) {
    route_ = ops::groups_choose(probs_, N, G_, ops::ceil_capacity(cf, static_cast<double>(N) / G_));
  } else {
    ops::TokensChooseParams p;
    p.k = cfg_.top_k();
    p.capacity_factor = cf;
    p.dropless = cfg_.dropless();
    p.score_fn = fn;
    p.priority = cfg_.slot_priority() == switchyard::MoeConfig::SCORE ? ops::SlotPriority::score
                                                                      : ops::SlotPriority::position;
    p.renormalize = cfg_.renormalize();
    if (cfg_.bias_balance_rate() > 0) p.selection_bias = bias_;
    if (gumbel) p.selection_keys = &keys;
    route_ = ops::tokens_choose(probs_, N, G_, p);
  }

  buf_ = Tensor({route_.rows(), C_});
  ops::dispatch_forward(buf_, x, route_);
  // Expert parallelism: rows travel to the ranks owning their experts and back.
  std::vector<int32_t> offsets = route_.offset;
  ebuf_ = buf_;
  if (exchange_) {
    exchange_->reset_counters();
    exchange_->plan(route_.count, name_.c_str());
    ebuf_ = exchange_->forward(buf_, name_.c_str());
    offsets = exchange_->expert_offsets();
  }
  pre_ = Tensor({ebuf_.dim(0), H_});
  Tensor eout({ebuf_.dim(0), C_});
  ops::expert_ffn_forward(eout, pre_, ebuf_, offsets, {w1_->value, b1_->value, w2_->value, b2_->value});
  out_ = exchange_ ? exchange_->reverse(eout, name_.c_str()) : eout;
  Tensor y({N, C_});
  ops::combine_forward(y, out_, route_);
  if (shared_) {
    Tensor s = shared_->forward(x);
    for (int64_t i = 0; i < y.numel(); ++i) y.f32()[i] += s.f32()[i];
  }

  // Statistics, and the router losses with their gradients (which backward
  // adds to the combine weights' own).
  stats_ = MoeStats{};
  stats_.capacity = route_.capacity;
  // Statistics over every data-parallel rank's tokens: the load-balance sums,
  // then dropped and assigned choices and the router entropy summed over tokens
  // (rank 0 reports them, so a rank-local value would describe 1/world of the batch).
  std::vector<double> sums = ops::load_balance_sums(probs_, route_);
  double token_entropy = 0;
  for (int64_t i = 0; i < N * G_; ++i)
    if (probs_[i] > 0) token_entropy -= probs_[i] * std::log(probs_[i]);
  sums.insert(sums.end(), {static_cast<double>(route_.dropped), static_cast<double>(route_.assigned),
                           token_entropy});
  if (par_ && par_->world_size() > 1)
    par_->world->all_reduce_sum(sums.data(), static_cast<int64_t>(sums.size()), name_.c_str());
  const double mean = 1.0 / G_;
  std::vector<double> f_lb, P_lb;
  ops::load_balance_fractions(sums, G_, f_lb, P_lb);
  std::vector<int64_t> load(G_);
  double var = 0, mx = 0;
  for (int64_t g = 0; g < G_; ++g) {
    load[g] = static_cast<int64_t>(sums[g]);
    mx = std::max(mx, f_lb[g]);
    var += (f_lb[g] - mean) * (f_lb[g] - mean);
  }
  stats_.load = f_lb;
  stats_.max_over_mean = mx / mean;
  stats_.cv = std::sqrt(var / G_) / mean;
  stats_.dropped = sums[2 * G_ + 2] / std::max(1.0, sums[2 * G_ + 3]);
  stats_.entropy = sums[2 * G_ + 4] / std::max(1.0, sums[2 * G_ + 1]);
  aux_dprobs_.assign(N * G_, 0.f);
  aux_dlogits_.assign(N * G_, 0.f);
  // Grouped balance is computed on this rank's tokens: a group never spans ranks.
  const int64_t lb_group = cfg_.load_balance_tokens();
  SY_CHECK(lb_group == 0 || N % lb_group == 0,
           name_ << ": moe.load_balance_tokens = " << lb_group << " does not divide the " << N
                 << " tokens this rank routes");
  stats_.lb_loss = lb_group > 0 ? ops::load_balance_loss_grouped(aux_dprobs_, probs_, route_, lb_group,
                                                                 cfg_.load_balance_coef())
                                : ops::load_balance_loss(aux_dprobs_, N, G_, f_lb, P_lb, cfg_.load_balance_coef());
  stats_.z_loss = ops::z_loss(aux_dlogits_, logits_.data(), N, G_, cfg_.z_loss_coef());
  float expected = 0;
  stats_.budget_loss =
      ops::budget_loss(aux_dprobs_, probs_, N, G_, cost_, cfg_.budget(), cfg_.budget_coef(), &expected);
  stats_.expected_cost = expected;

  if (training_ && cfg_.bias_balance_rate() > 0) ops::update_balance_bias(bias_, load, cfg_.bias_balance_rate());
  flops_ = 2.0 * N * C_ * G_ + 4.0 * ebuf_.dim(0) * C_ * H_ + (shared_ ? shared_->forward_flops() : 0);
  if (exchange_) stats_.comm_s = exchange_->seconds(), stats_.bytes_sent = exchange_->bytes_sent();
  return y;
}

Tensor MoeLayer::backward(const Tensor& dy) {
  const int64_t N = x_.dim(0);
  Tensor dx(x_.shape());
  // combine -> experts -> dispatch
  Tensor dout(out_.shape());
  std::vector<float> dweight;
  ops::combine_backward(dout, dweight, dy, out_, route_);
  // Gradients travel the forward's way: to the experts' owners, and back.
  if (exchange_) exchange_->reset_counters();
  Tensor edout = exchange_ ? exchange_->forward(dout, name_.c_str()) : dout;
  Tensor edbuf(ebuf_.shape());
  ops::expert_ffn_backward(edbuf, {w1_->grad, b1_->grad, w2_->grad, b2_->grad}, edout, ebuf_, pre_,
                           exchange_ ? exchange_->expert_offsets() : route_.offset,
                           {w1_->value, b1_->value, w2_->value, b2_->value});
  Tensor dbuf = exchange_ ? exchange_->reverse(edbuf, name_.c_str()) : edbuf;
  ops::dispatch_backward(dx, dbuf, route_);
  if (exchange_) stats_.comm_s += exchange_->seconds(), stats_.bytes_sent += exchange_->bytes_sent();
  // Router: weights and losses -> dprobs -> dlogits (+ z-loss) -> Wg, x.
  std::vector<float> dprobs = aux_dprobs_, dlogits = aux_dlogits_;  // the router losses' part
  ops::route_weights_backward(dprobs, dweight, probs_, route_, cfg_.renormalize() && !expert_choice(cfg_));
  ops::router_scores_backward(dlogits, dprobs, probs_, N, G_, score_fn(cfg_));
  // The router saw x * noise: its input gradient is scaled by the same noise.
  Tensor dxr(x_.shape());
  ops::gemm_rows_backward(dxr.f32(), wg_->grad.f32(), nullptr, dlogits.data(), xr_.f32(),
                          wg_->value.f32(), N, C_, G_);
  for (int64_t i = 0; i < dx.numel(); ++i)
    dx.f32()[i] += noise_.empty() ? dxr.f32()[i] : dxr.f32()[i] * noise_[i];
  if (shared_) {
    Tensor ds = shared_->backward(dy);
    for (int64_t i = 0; i < dx.numel(); ++i) dx.f32()[i] += ds.f32()[i];
  }
  return dx;
}

}  // namespace sy
