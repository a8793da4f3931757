#include "runtime/router.h"

#include <algorithm>
#include <cmath>

#include "ops/elementwise.h"
#include "ops/hash_routing.h"
#include "ops/matmul.h"
#include "ops/random.h"
#include "ops/sinkhorn.h"

namespace sy {

namespace {
ops::ScoreFn score_fn(const switchyard::MoeConfig& c) {
  return c.score_function() == switchyard::MoeConfig::SIGMOID ? ops::ScoreFn::sigmoid : ops::ScoreFn::softmax;
}
bool expert_choice(const switchyard::MoeConfig& c) { return c.router() == switchyard::MoeConfig::EXPERT_CHOICE; }
// The expected-cost budget loss (its value taken on this rank's tokens).
bool expected_budget(const switchyard::MoeConfig& c) {
  return c.budget_coef() != 0 && c.budget_estimator() == switchyard::MoeConfig::EXPECTED;
}
// moe.expert_groups, groups_per_token and group_score_experts as resolved
// (validated by validate_config): off where expert_groups is 0.
ops::GroupLimit group_limit(const switchyard::MoeConfig& c) {
  ops::GroupLimit g;
  if (c.expert_groups() <= 0) return g;
  g.groups = c.expert_groups();
  g.kept = c.groups_per_token();
  const int64_t per_group = c.num_experts() / c.expert_groups();
  g.top_n = c.group_score_experts() > 0 ? c.group_score_experts() : std::min<int64_t>(2, per_group);
  return g;
}
}  // namespace

Router::Router(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, const switchyard::MoeConfig& cfg,
               std::vector<float> cost, Rng& rng, float std, uint64_t seed, ParallelContext* par)
    : ctx_(ctx), cfg_(cfg), name_(name), C_(C), G_(cfg.num_experts()), par_(par), cost_(std::move(cost)),
      seed_(seed) {
  SY_CHECK(static_cast<int64_t>(cost_.size()) == G_, name << ": " << cost_.size() << " expert costs for " << G_
                                                             << " experts");
  // A token's cost is the sum over its k choices (moe.budget's units), so
  // the expected cost is k sum_g q_ig c_g: each choice drawn from q. (Over
  // one choice, a top-2 router's loss compared half its cost with B.)
  for (float c : cost_) k_cost_.push_back(c * static_cast<float>(cfg_.top_k()));
  wg_ = ps.add(name + ".router.w", {C_, G_}, rng, std, false);
  bias_ = Tensor::zeros({G_}, DType::f32, ctx_);
  if (cfg.router() == switchyard::MoeConfig::HASH && cfg.hash_assignment() == switchyard::MoeConfig::BALANCED) {
    SY_CHECK(cfg.hash_table_size() > 0,
             name << ": moe.hash_assignment BALANCED without its moe.hash_table (training fills it from the data)");
    hash_table_ = Tensor::from_host(std::vector<int32_t>(cfg.hash_table().begin(), cfg.hash_table().end())).to(ctx_);
  }
}

bool Router::renormalized() const { return cfg_.renormalize() && !expert_choice(cfg_); }

// The probabilities are kept where more than the batch-wide load balance,
// the z-loss and backward read them: expert choice (the groups choose from
// them), the hard budget (its drop order), the grouped load balance, the
// budget losses and sigmoid scores (whose statistics and balance loss are of
// the rows normalised to sum 1, ops::normalize_scores). Otherwise the gating writes none and routing_sums_logits
// and router_backward recompute them from the logits (ops/router_loss.h):
// one (N, G) write less in forward, and in backward one pass for the
// losses' zero-filled gradients, their clones and three more passes.
bool Router::keeps_probs() const {
  return expert_choice(cfg_) || cfg_.budget_mode() != switchyard::MoeConfig::SOFT || cfg_.budget_coef() != 0 ||
         cfg_.load_balance_tokens() > 0 || score_fn(cfg_) == ops::ScoreFn::sigmoid;
}

const ops::Route& Router::forward(const Tensor& x) {
  const int64_t N = x.dim(0);
  // Draws of element e of a (N, width) tensor are keyed by its index in the
  // global batch: rank r's slice holds micro-batches 0..micros-1 of N tokens
  // each, so micro-batch m's tokens start at (r micros + m) N (r N without
  // micro-batches).
  const uint64_t first_token = (static_cast<uint64_t>(par_ ? par_->rank() : 0) * micros_ + micro_) * N;
  auto key = [&](RandomPurpose p, int64_t width) {
    return RandomKey{seed_, random_stream(p), step_, first_token * width};
  };
  // Router input, with multiplicative jitter in training.
  xr_ = x;
  noise_ = Tensor();
  if (training_ && cfg_.jitter() > 0) {
    noise_ = Tensor::empty(x.shape(), DType::f32, ctx_);
    ops::random_uniform(ctx_, noise_, key(RandomPurpose::jitter, C_), 1.f - cfg_.jitter(), 1.f + cfg_.jitter());
    xr_ = x.clone(ctx_);
    ops::mul_into(ctx_, xr_, noise_);
  }
  logits_ = Tensor::empty({N, G_}, DType::f32, ctx_);
  ops::matmul_forward(ctx_, {logits_, xr_, wg_->value, Tensor()});
  // Noisy gating: the noise is a constant offset, so backward is unchanged.
  const bool noisy = training_ && cfg_.router_noise() > 0;
  const bool gumbel = noisy && cfg_.router_noise_kind() == switchyard::MoeConfig::GUMBEL;
  // The balancing bias is moved by the loads of the noiseless choice (what
  // evaluation and inference route): the noise spreads training batches by
  // itself and would hide a preference of the clean argmax from the bias.
  const bool bias_on_clean = noisy && cfg_.bias_balance_rate() > 0 && !expert_choice(cfg_);
  // The Sinkhorn offsets evaluation keeps are those of the noiseless logits too.
  const bool h_on_clean = noisy && cfg_.sinkhorn_at_eval();
  clean_sums_ = Tensor();
  // (Gumbel draws go to separate keys: the logits stay clean.)
  const Tensor clean_logits = !(bias_on_clean || h_on_clean) ? Tensor() : gumbel ? logits_ : logits_.clone(ctx_);
  if (noisy && !gumbel) {
    Tensor eps = Tensor::empty(logits_.shape(), DType::f32, ctx_);
    ops::random_normal(ctx_, eps, key(RandomPurpose::router_noise, G_), cfg_.router_noise());
    ops::add_into(ctx_, logits_, eps);
  }
  // Gumbel selection keys: logits + beta * (-log(-log u)); argmax over them
  // picks g with probability softmax(l / beta)_g (Gumbel-max). Selection only:
  // backward never sees them.
  Tensor keys;
  if (gumbel) {
    Tensor g = Tensor::empty(logits_.shape(), DType::f32, ctx_);
    ops::random_gumbel(ctx_, g, key(RandomPurpose::gumbel, G_), cfg_.router_noise());
    keys = logits_.clone(ctx_);
    ops::add_into(ctx_, keys, g);
  }
  probs_ = keeps_probs() ? Tensor::empty({N, G_}, DType::f32, ctx_) : Tensor();

  // (Expert choice: capacity_factor is its mean experts a token, so it is the
  // model's function, kept at evaluation; Zhou et al. 2022 evaluate so too.)
  const float cf = training_ || expert_choice(cfg_) ? cfg_.capacity_factor() : cfg_.capacity_factor_eval();
  if (expert_choice(cfg_)) {
    ops::router_scores(ctx_, probs_, logits_, score_fn(cfg_));
    ops::groups_choose(ctx_, route_, probs_,
                       std::max<int64_t>(ops::ceil_capacity(cf, static_cast<double>(N) / G_), cfg_.min_capacity()));
  } else {
    ops::TokensChooseParams p;
    p.k = cfg_.top_k();
    p.capacity_factor = cf;
    p.min_capacity = cfg_.min_capacity();
    p.dropless = cfg_.dropless();
    p.priority = cfg_.slot_priority() == switchyard::MoeConfig::SCORE         ? ops::SlotPriority::score
                 : cfg_.slot_priority() == switchyard::MoeConfig::TOKEN_ORDER ? ops::SlotPriority::token_order
                                                                               : ops::SlotPriority::position;
    // Random token selection: in training the slots go in the order of a
    // uniform draw per token (selection only, like the Gumbel keys).
    Tensor rts;
    if (training_ && cfg_.slot_priority() == switchyard::MoeConfig::RANDOM) {
      rts = Tensor::empty({N}, DType::f32, ctx_);
      ops::random_uniform(ctx_, rts, key(RandomPurpose::token_select, 1), 0.f, 1.f);
      p.priority = ops::SlotPriority::score;
      p.priority_keys = &rts;
    }
    p.renormalize = cfg_.renormalize();
    p.padded = cfg_.padded() && decode_window_ == 0;  // (decoding drops rows: a counted route)
    if (cfg_.bias_balance_rate() > 0) p.selection_bias = &bias_;
    if (gumbel) p.selection_keys = &keys;
    // Hash routing: the keys name each token id's expert (0 there, -inf
    // elsewhere), so the top-1 is it; the weight stays the probability.
    Tensor hash_keys;
    if (cfg_.router() == switchyard::MoeConfig::HASH) {
      SY_CHECK(ids_.defined() && ids_.numel() == N,
               name_ << ": moe.router HASH routes by token id, and " << (ids_.defined() ? ids_.numel() : 0)
                     << " ids were given for these " << N << " rows");
      hash_keys = Tensor::empty({N, G_}, DType::f32, ctx_);
      ops::hash_route_keys(ctx_, hash_keys, ids_, seed_, hash_table_);
      p.selection_keys = &hash_keys;
    }
    // Sinkhorn balancing (ops/sinkhorn.h), training only: the top-k of the
    // keys (the logits, noisy where noise is on, or the Gumbel keys) plus h,
    // which gives every expert the same share of the scaled exp(keys). With
    // sinkhorn_at_eval, evaluation selects by the logits plus a running mean
    // of offsets (the balancing bias, moved in end_step).
    Tensor sinkhorn_h;
    const Tensor& sinkhorn_keys = gumbel ? keys : logits_;
    if (training_ && cfg_.sinkhorn_iters() > 0) {
      sinkhorn_h = sinkhorn_offsets(sinkhorn_keys, h_on_clean ? clean_logits : Tensor());
      p.selection_keys = &sinkhorn_keys;
      p.selection_bias = &sinkhorn_h;
    } else if (!training_ && cfg_.sinkhorn_at_eval()) {
      p.selection_keys = &logits_;
      p.selection_bias = &bias_;
    }
    p.group_limit = group_limit(cfg_);  // (the clean choice below too)
    // scores and choice in one call (on a GPU one kernel: the logits read once)
    ops::tokens_choose_logits(ctx_, route_, probs_, logits_, score_fn(cfg_), p);
    if (bias_on_clean) {
      Tensor clean_probs;  // (not kept: only the choice's loads are read)
      p.selection_keys = nullptr;
      // Only its groups and slots are read (routing_sums), the same in a
      // padded route, which on a GPU needs no copy back: one wait less.
      p.padded = !p.dropless;
      ops::Route clean;
      ops::tokens_choose_logits(ctx_, clean, clean_probs, clean_logits, score_fn(cfg_), p);
      // This rank's sums; losses_and_stats sums them over ranks in the same
      // all-reduce as the noisy choice's (one collective per layer, not two).
      clean_sums_ = Tensor::empty({ops::routing_sums_size(G_)}, DType::f64, ctx_);
      ops::routing_sums_logits(ctx_, clean_sums_, clean_logits, score_fn(cfg_), clean);
    }
  }
  if (decode_window_ > 0 && !expert_choice(cfg_)) drop_as_the_window_would();
  if (cfg_.budget_mode() != switchyard::MoeConfig::SOFT) {
    ops::BudgetParams bp;
    bp.cost = cost_;
    bp.budget = cfg_.budget();
    bp.causal = cfg_.budget_mode() == switchyard::MoeConfig::HARD_CAUSAL;
    bp.segment = seq_len_ > 0 && N % seq_len_ == 0 ? seq_len_ : 0;
    ops::apply_budget(ctx_, route_, probs_, bp);
  }
  capacity_ = route_.capacity;  // (the limit, before padding makes it the stride)
  // After the budget's drops (which renumber the rows): every expert's
  // buffer padded to this step's largest count (moe.pad_to_largest).
  // The counted rows per expert are kept for the experts' FLOPs (the padded
  // buffer's say nothing of which expert the padding rows pad).
  counts_before_padding_.clear();
  if (cfg_.pad_to_largest() && !expert_choice(cfg_) && decode_window_ == 0) {
    counts_before_padding_ = route_.host_count();
    ops::pad_to_largest(ctx_, route_, 16);
  }
  losses_and_stats(N);
  return route_;
}

void Router::set_decode(int64_t window, std::vector<int64_t>* counts) {
  SY_CHECK(window == 0 || (counts && static_cast<int64_t>(counts->size()) == G_),
           name_ << ": decoding needs the cache's counts of " << G_ << " experts");
  decode_window_ = window;
  decode_counts_ = window > 0 ? counts : nullptr;
}

// A forward over the window gives expert g C slots, C = max(ceil(cf k W /
// G), min_capacity) (ops/routing.h), handed out by position or token by
// token: the token at position p keeps its choice of g iff fewer than C of
// the window's assignments before it chose g. Its own forward routed it
// alone (no drops); the choices of full experts are dropped here by the
// budget step, each costing 1 against a budget of 0 (ops::apply_budget:
// zero-cost choices are never dropped). Dropless windows drop nothing.
void Router::drop_as_the_window_would() {
  SY_CHECK(ctx_.device.is_cpu() && route_.num_items == 1 && !training_,
           name_ << ": decoding routes one token in evaluation on the CPU");
  const int64_t k = route_.k;
  const int32_t* group = route_.group.data<int32_t>();
  std::vector<float> full(G_, 0.f);
  bool drops = false;
  if (!cfg_.dropless()) {
    ops::TokensChooseParams p;  // the window's capacity, as tokens_choose sets it
    p.k = static_cast<int>(k);
    p.capacity_factor = cfg_.capacity_factor_eval();
    p.min_capacity = cfg_.min_capacity();
    const int64_t C = ops::tokens_choose_capacity(p, decode_window_, G_);
    for (int64_t a = 0; a < k; ++a)
      if (group[a] >= 0 && (*decode_counts_)[group[a]] >= C) full[group[a]] = 1.f, drops = true;
  }
  for (int64_t a = 0; a < k; ++a)
    if (group[a] >= 0) ++(*decode_counts_)[group[a]];
  if (!drops) return;
  ops::BudgetParams bp;
  bp.cost = full;
  bp.budget = 0;
  ops::apply_budget(ctx_, route_, logits_, bp);
  // What the budget step dropped, the window drops over capacity: slot -1,
  // counted as a capacity drop in the statistics (as the window's forward
  // counts it), not -2, a budget drop.
  int32_t* slot = route_.slot.data<int32_t>();
  for (int64_t a = 0; a < k; ++a)
    if (slot[a] == -2) slot[a] = -1, ++route_.dropped, --route_.budget_dropped;
}

Tensor Router::sinkhorn_offsets(const Tensor& keys, const Tensor& clean) {
  Tensor h = Tensor::empty({G_}, DType::f32, ctx_);
  ops::sinkhorn_balance(ctx_, h, keys, cfg_.sinkhorn_iters());
  if (!cfg_.sinkhorn_at_eval()) return h;
  // This micro-batch's row of the step's evaluation offsets (written, not
  // added: a replayed forward counts once): those of the noiseless logits
  // where noise moved the keys, which balance the choice evaluation makes
  // (as the balancing bias follows the noiseless loads).
  if (!h_recorded_) step_h_ = Tensor::zeros({micros_, G_}, DType::f32, ctx_);
  SY_CHECK(step_h_.dim(0) == micros_ && micro_ < micros_,
           name_ << ": micro-batch " << micro_ << " of " << micros_ << " in a step begun with " << step_h_.dim(0)
                 << " micro-batches");
  Tensor row = step_h_.rows(micro_, micro_ + 1).reshape({G_});
  if (clean.defined())
    ops::sinkhorn_balance(ctx_, row, clean, cfg_.sinkhorn_iters());
  else
    row.copy_from(h, ctx_);
  h_recorded_ = true;
  return h;
}

void Router::losses_and_stats(int64_t N) {
  // Statistics over every data-parallel rank's tokens (rank 0 reports them, so
  // a rank-local value would describe 1/world of the batch).
  // The routing sums, after them the noiseless choice's where the bias
  // follows it, then the values of the losses taken on this rank's tokens
  // (z-loss, grouped balance, expected cost; stats() reports their mean over
  // ranks): one buffer, one all-reduce; the losses of the summed routing
  // (batch-wide balance, realised cost) after it.
  const int64_t S = ops::routing_sums_size(G_);
  const bool clean = clean_sums_.defined();
  const int64_t n_sums = clean ? 2 * S : S;
  totals_ = Tensor::zeros({n_sums + kValues}, DType::f64, ctx_);
  Tensor sums = totals_.rows(0, S);
  // The routing distribution whose mean is the balance loss's P_g and whose
  // entropy is reported: the probabilities, or with sigmoid scores (rows that
  // do not sum to 1) each row over its sum, as DeepSeek-V3's balance loss
  // and Megatron-LM's auxiliary losses take them. With raw sigmoid
  // scores sum_g f_g P_g falls as every score falls, so its gradient lowered
  // all scores besides balancing them; q does not change when a row's scores
  // scale together, and at f_g = 1/G the loss is alpha whatever the scores
  // (its gradient 0).
  const bool normalized = score_fn(cfg_) == ops::ScoreFn::sigmoid && probs_.defined();
  Tensor q;
  if (normalized) {
    q = Tensor::empty(probs_.shape(), DType::f32, ctx_);
    ops::normalize_scores(ctx_, q, probs_);
  }
  const Tensor& dist = normalized ? q : probs_;
  if (dist.defined())
    ops::routing_sums(ctx_, sums, dist, route_);
  else
    ops::routing_sums_logits(ctx_, sums, logits_, score_fn(cfg_), route_);
  if (clean) {
    Tensor dst = totals_.rows(S, 2 * S);
    dst.copy_from(clean_sums_, ctx_);
  }
  Tensor values = totals_.rows(n_sums, n_sums + kValues);

  // Without kept probabilities the losses give their values only here, and
  // router_backward their gradients (keeps_probs()).
  aux_dprobs_ = probs_.defined() ? Tensor::zeros({N, G_}, DType::f32, ctx_) : Tensor();
  aux_dlogits_ = probs_.defined() ? Tensor::zeros({N, G_}, DType::f32, ctx_) : Tensor();
  // Grouped balance is computed on this rank's tokens: a group never spans
  // ranks. Where the groups cannot tile the forward's tokens outside
  // training, the batch-wide loss, whose value nothing trains: a decoded
  // token routed alone, a depth-routed block's evaluation call (one
  // sequence's kept tokens, any count), a generation window shorter than a
  // group. (In training the config and the trainer have checked the tiling.)
  const int64_t lb_cfg = cfg_.load_balance_tokens();
  const bool untiled = lb_cfg > 0 && (decode_window_ > 0 || (!training_ && N % lb_cfg != 0));
  const int64_t lb_group = untiled ? 0 : lb_cfg;
  SY_CHECK(lb_group == 0 || N % lb_group == 0,
           name_ << ": moe.load_balance_tokens = " << lb_group << " does not divide the " << N
                 << " tokens this rank routes");
  Tensor lb = values.rows(kLoadBalance, kLoadBalance + 1), z = values.rows(kZ, kZ + 1);
  // The losses over the distribution (balance, budget) add their gradient
  // to dq, then d q / d p takes it onto the probabilities'.
  const bool expected = expected_budget(cfg_);
  Tensor dq = normalized && (cfg_.load_balance_coef() != 0 || cfg_.budget_coef() != 0)
                  ? Tensor::zeros({N, G_}, DType::f32, ctx_)
                  : Tensor();
  Tensor& ddist = dq.defined() ? dq : aux_dprobs_;  // (coefficients 0: nothing is added)
  lb_rank_local_ = lb_group > 0;
  if (lb_group > 0)
    ops::load_balance_loss_grouped(ctx_, ddist, lb, dist, route_, lb_group, cfg_.load_balance_coef());
  ops::z_loss(ctx_, aux_dlogits_, z, logits_, cfg_.z_loss_coef());
  if (expected) {
    Tensor b = values.rows(kBudget, kBudget + 2);
    ops::budget_loss(ctx_, ddist, b, dist, k_cost_, cfg_.budget(), cfg_.budget_coef());
  }
  if (padding_) {  // (the rank's values too; those of the summed sums follow)
    totals_.zero(ctx_);
    if (!one_.defined()) one_ = Tensor::from_host(std::vector<double>{1.0}).to(ctx_);
    Tensor padded = totals_.rows(n_sums + kPadded, n_sums + kPadded + 1);
    padded.copy_from(one_, ctx_);
  }
  if (par_ && par_->world_size() > 1) par_->world->all_reduce_sum(totals_, ctx_.stream, name_.c_str());
  if (lb_group == 0) ops::load_balance_loss(ctx_, ddist, lb, sums, cfg_.load_balance_coef());
  if (!expected && cfg_.budget_coef() != 0) {
    // On the cost the router asked for: the hard budget's drops count, so the
    // loss stays active while the budget is being enforced. R comes from the
    // (all-reduced) sums on the device, and so does its condition R > B.
    Tensor b = values.rows(kBudget, kBudget + 1);
    ops::RealizedBudgetArgs a{cost_};
    a.budget = cfg_.budget();
    a.lambda = cfg_.budget_coef();
    a.count_budget_drops = true;
    a.sums = &sums;
    a.value = &b;
    // (Its straight-through gradient on q too: over raw sigmoid scores it
    // only lowered the kept ones, and every score drifted down with it.)
    ops::realized_budget_loss(ctx_, ddist, dist, route_, a);
  }
  if (dq.defined()) ops::normalize_scores_backward(ctx_, aux_dprobs_, dq, probs_);

  if (training_ && cfg_.bias_balance_rate() > 0) {
    // Recorded, not applied: the bias moves once a step (end_step), so every
    // micro-batch of a step routes with the bias one pass would have used.
    const Tensor load = clean ? totals_.rows(S, S + G_) : totals_.rows(0, G_);  // the chosen counts
    // Row m is micro-batch m's (its last forward's, should one run twice);
    // a row no forward wrote stays zero (it adds nothing to the sum).
    if (!load_recorded_) step_load_ = Tensor::zeros({micros_, G_}, DType::f64, ctx_);
    SY_CHECK(step_load_.dim(0) == micros_ && micro_ < micros_,
             name_ << ": micro-batch " << micro_ << " of " << micros_ << " in a step begun with "
                   << step_load_.dim(0) << " micro-batches");
    Tensor row = step_load_.rows(micro_, micro_ + 1).reshape({G_});
    row.copy_from(load, ctx_);
    load_recorded_ = true;
  }
  // (Kept on the device, each forward's own buffer: read once, by stats().)
  if (pooling_) {
    pool_.push_back(totals_);
  } else if (training_ && micros_ > 1) {
    // A training step's micro-batches: its statistics are the step's (slot
    // m is micro-batch m's last forward: a replayed one counts once).
    if (micro_ == 0) pool_.clear();
    if (static_cast<int>(pool_.size()) <= micro_) pool_.resize(micro_ + 1);
    pool_[micro_] = totals_;
  } else {
    pool_.clear();
  }
  stats_read_ = false;
}

void Router::pool_statistics(bool on) {
  if (on) pool_.clear();
  if (!on && pooling_ && pool_.empty()) {
    // No part ran (no token reached the layer on one rank): statistics of
    // no tokens, not the forward's before.
    stats_ = RoutingStats{};
    stats_.load.assign(G_, 0.0);
    stats_.budget = cfg_.budget();
    stats_read_ = true;
  }
  pooling_ = on;
}

void Router::release() {
  xr_ = noise_ = logits_ = probs_ = aux_dprobs_ = aux_dlogits_ = Tensor();
}

void Router::end_step() {
  if (h_recorded_) {
    // bias = decay bias + (1 - decay) mean h: h over the micro-batches, then
    // over the ranks (every rank's bias the same), in fixed order.
    Tensor h = Tensor::zeros({G_}, DType::f32, ctx_);
    for (int m = 0; m < micros_; ++m) ops::add_into(ctx_, h, step_h_.rows(m, m + 1).reshape({G_}));
    const int world = par_ ? par_->world_size() : 1;
    if (world > 1) par_->world->all_reduce_sum(h, ctx_.stream, name_.c_str());
    const float decay = cfg_.sinkhorn_eval_decay();
    ops::scale(ctx_, h, (1.f - decay) / static_cast<float>(micros_ * world));
    ops::scale(ctx_, bias_, decay);
    ops::add_into(ctx_, bias_, h);
    h_recorded_ = false;
  }
  if (!load_recorded_) return;  // no training forward this step (or no balancing)
  ops::update_balance_bias(ctx_, bias_, step_load_, cfg_.bias_balance_rate());
  load_recorded_ = false;
}

const RoutingStats& Router::stats() const {
  if (stats_read_) return stats_;
  RoutingStats st;  // stats_ and the flag change only once the copy has come back
  st.capacity = capacity_;
  const int64_t S = ops::routing_sums_size(G_), n_sums = totals_.numel() - kValues;
  // The one copy back, when the statistics are asked for (one of each
  // pooled forward's sums, summed here).
  Tensor h;
  // Forwards in which some rank routed tokens: what a loss taken once on
  // the summed sums (the batch-wide balance, the realised budget) is
  // averaged over. A call every rank padded (no rank's sequence kept a
  // token) has all-zero sums, and its 0 is no loss value.
  const double world = par_ ? par_->world_size() : 1;
  double calls = 1, routed_calls = 0;
  if (pool_.empty()) {
    h = totals_.to(host_ctx());
    routed_calls = h.data<double>()[n_sums + kPadded] < world ? 1 : 0;
  } else {
    calls = 0;
    std::vector<double> sum(static_cast<size_t>(totals_.numel()), 0.0);
    for (const Tensor& t : pool_) {
      if (!t.defined()) continue;  // (a micro-batch this layer did not see)
      SY_CHECK(t.numel() == totals_.numel(),
               name_ << ": pooled forwards with " << t.numel() << " and " << totals_.numel() << " totals");
      const Tensor th = t.to(host_ctx());
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += th.data<double>()[i];
      ++calls;
      if (th.data<double>()[n_sums + kPadded] < world) ++routed_calls;
    }
    h = Tensor::from_host(sum);
  }
  const ops::RoutingTotals tot = ops::RoutingTotals::read(h.rows(0, S), G_);
  const double* values = h.data<double>() + n_sums;
  const std::vector<double> f = tot.f();
  const double mean = 1.0 / G_;
  double var = 0, mx = 0;
  for (int64_t g = 0; g < G_; ++g) {
    mx = std::max(mx, f[g]);
    var += (f[g] - mean) * (f[g] - mean);
  }
  st.load = f;
  st.max_over_mean = mx / mean;
  st.cv = std::sqrt(var / G_) / mean;
  st.dropped = tot.dropped / std::max(1.0, tot.assigned);
  st.unserved = tot.unserved / std::max(1.0, tot.items);
  st.entropy = tot.entropy / std::max(1.0, tot.items);
  st.items = tot.items;
  st.assigned = tot.assigned;
  // Summed over ranks where taken on each rank's tokens, and over pooled
  // forwards: their mean over the (rank, forward) pairs that routed tokens
  // (a rank's padding call adds 0 to the value and 1 to `padded`). Taken
  // once on summed sums: the mean over the forwards that routed tokens.
  const double rank_calls = std::max(1.0, world * calls - values[kPadded]);
  const double once = std::max(1.0, routed_calls);
  st.lb_loss = values[kLoadBalance] / (lb_rank_local_ ? rank_calls : once);
  st.z_loss = values[kZ] / rank_calls;
  st.realized_cost = tot.realized_cost(cost_);
  st.cost_before_budget = tot.cost_before_budget(cost_);
  st.expected_cost = tot.expected_cost(cost_);
  st.budget = cfg_.budget();
  st.budget_applies = cfg_.budget_coef() > 0 || cfg_.budget_mode() != switchyard::MoeConfig::SOFT;
  st.budget_dropped = tot.budget_dropped / std::max(1.0, tot.assigned);
  st.budget_loss = values[kBudget] / (expected_budget(cfg_) ? rank_calls : once);
  stats_ = st;
  stats_read_ = true;
  return stats_;
}

void Router::backward(const Tensor& dweight, Tensor& dx) {
  // Weights and losses -> dprobs -> dlogits (+ z-loss) -> Wg, x.
  Tensor dlogits;
  if (probs_.defined()) {
    Tensor dprobs = aux_dprobs_.clone(ctx_);
    dlogits = aux_dlogits_.clone(ctx_);
    ops::route_weights_backward(ctx_, dprobs, dweight, probs_, route_, renormalized());
    ops::router_scores_backward(ctx_, dlogits, dprobs, probs_, score_fn(cfg_));
  } else {  // the same in one pass, the probabilities recomputed (keeps_probs())
    dlogits = Tensor::empty(logits_.shape(), DType::f32, ctx_);
    const Tensor sums = totals_.rows(0, ops::routing_sums_size(G_));
    ops::router_backward(ctx_, dlogits,
                         {logits_, score_fn(cfg_), route_, dweight, renormalized(), &sums,
                          cfg_.load_balance_coef(), cfg_.z_loss_coef()});
  }
  // The router saw x * noise: its input gradient is scaled by the same noise.
  Tensor dxr = Tensor::zeros(dx.shape(), DType::f32, ctx_);
  ops::matmul_backward(ctx_, {&dxr, &wg_->grad, nullptr, dlogits, xr_, wg_->value});
  if (noise_.defined()) ops::mul_into(ctx_, dxr, noise_);
  ops::add_into(ctx_, dx, dxr);
}

}  // namespace sy
