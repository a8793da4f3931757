#include "runtime/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <sstream>

#include "ops/adamw.h"
#include "ops/finite.h"
#include "ops/hash_routing.h"
#include "runtime/checkpoint.h"
#include "runtime/metrics.h"
#include "runtime/op_profile_report.h"
#include "runtime/optimizer_shard.h"
#include "runtime/output_file.h"

namespace sy {

namespace {

std::unique_ptr<DeviceRuntime> device_for(const Config& cfg, int device) {
  if (cfg.backend() != switchyard::Config::CUDA) return nullptr;
  return DeviceRuntime::create(device);
}

// moe.hash_assignment BALANCED's map, made from the training split's counts
// where the config has none yet (a fresh run; a resumed one carries its
// checkpoint's: adopt_hash_table): cfg gains it, so the checkpoints it
// writes carry it on. Every rank reads its own copy of the data:
// train_switch checks that they made the same map (Trainer::config()).
const Config& with_hash_table(Config& cfg, const TrainingData& data) {
  auto& e = *cfg.mutable_moe();
  if (e.num_experts() > 0 && e.router() == switchyard::MoeConfig::HASH &&
      e.hash_assignment() == switchyard::MoeConfig::BALANCED && e.hash_table_size() == 0)
    for (int32_t g : ops::balanced_hash_table(data.train().counts(cfg.model().vocab_size()), e.num_experts()))
      e.add_hash_table(g);
  return cfg;
}

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Mean of one value over all ranks.
float world_mean(ParallelContext* par, float v, const char* what) {
  if (!par || par->world_size() == 1) return v;
  return static_cast<float>(par->world->all_reduce_sum(static_cast<double>(v), what) / par->world_size());
}

// Copies of the model's routing state (centroids, balancing biases), taken
// before a step so a skipped one can put them back: forward updates them
// before the step's loss is known. Copies on the model's device, ordered on
// its stream: no wait (a host copy would wait for the device every step).
struct RoutingStateCopy {
  std::vector<std::pair<Tensor, Tensor>> tensors;  // (the model's, a copy)
  std::vector<std::pair<bool*, bool>> flags;
};

RoutingStateCopy copy_routing_state(Transformer& model) {
  RoutingStateCopy c;
  auto keep = [&](const Tensor& t) { c.tensors.emplace_back(t, t.clone(model.ctx())); };
  for (const CentroidSetRef& s : model.centroid_sets()) {
    keep(s.centroids->mu);
    keep(s.centroids->sum);
    keep(s.centroids->count);
    c.flags.emplace_back(&s.centroids->initialized, s.centroids->initialized);
  }
  for (const auto& [name, t] : model.balance_biases()) keep(t);
  return c;
}

void put_back(Transformer& model, RoutingStateCopy& c) {
  for (auto& [dst, src] : c.tensors) dst.copy_from(src, model.ctx());
  for (auto& [flag, v] : c.flags) *flag = v;
}

}  // namespace

float learning_rate(const switchyard::TrainConfig& t, int64_t step) {
  if (t.warmup_steps() > 0 && step <= t.warmup_steps())
    return t.lr() * static_cast<float>(step) / t.warmup_steps();
  const double span = std::max<int64_t>(1, t.steps() - t.warmup_steps());
  const double progress = std::min(1.0, (step - t.warmup_steps()) / span);
  const double min_lr = t.lr() * t.min_lr_ratio();
  return static_cast<float>(min_lr + 0.5 * (t.lr() - min_lr) * (1.0 + std::cos(M_PI * progress)));
}

Trainer::Trainer(const Config& cfg, TrainOptions opts)
    : cfg_(cfg),
      opts_(std::move(opts)),
      device_(device_for(cfg, opts_.device)),
      ctx_(device_ ? device_->ctx() : host_ctx()),
      data_(cfg),
      model_(ctx_, with_hash_table(cfg_, data_), opts_.par),
      train_(data_.train(), cfg.train().batch(), cfg.model().seq_len(), cfg.train().seed() + 1),
      val_(data_.val(), cfg.train().batch(), cfg.model().seq_len(), 0),
      // Training text the loss never sees at step 1: another seed's windows.
      warmup_(data_.train(), cfg.train().batch(), cfg.model().seq_len(), cfg.train().seed() + 2) {
  if (opts_.par) rank_ = opts_.par->rank(), world_ = opts_.par->world_size();
  if (cfg.train().batch() % world_ != 0)
    throw ConfigError("train.batch = " + std::to_string(cfg.train().batch()) + ": the global batch must split evenly over " +
                      std::to_string(world_) + " ranks");
  if (cfg.train().batch() / world_ % cfg.train().micro_batches() != 0)
    throw ConfigError("train.micro_batches = " + std::to_string(cfg.train().micro_batches()) + ": must divide " +
                      std::to_string(cfg.train().batch() / world_) + ", each rank's sequences (train.batch = " +
                      std::to_string(cfg.train().batch()) + " over " + std::to_string(world_) + " ranks)");
  {  // a rank's forward holds batch / (ranks x micro_batches) sequences; load-balance groups must tile it
    const int64_t forward_tokens = int64_t{cfg.train().batch()} / world_ / cfg.train().micro_batches() * cfg.model().seq_len();
    const int64_t lb = cfg.moe().load_balance_tokens();
    if (cfg.moe().num_experts() > 0 && lb > 0 && forward_tokens % lb != 0)
      throw ConfigError("moe.load_balance_tokens = " + std::to_string(lb) + ": must divide " +
                        std::to_string(forward_tokens) + ", the tokens of one rank's forward (train.batch / (ranks x " +
                        "train.micro_batches) x model.seq_len)");
  }
  if (rank_ != 0) opts_.log = nullptr, opts_.metrics_path.clear();
  if (opts_.par && world_ > 1)
    reducer_ = std::make_unique<GradientReducer>(ctx_, model_.params(), *opts_.par,
                                                 static_cast<int64_t>(cfg.parallel().grad_bucket_mb() * (1 << 20)),
                                                 cfg.parallel().overlap_grad_reduce(), scattered_grads());
  if (!opts_.op_profile_path.empty()) {
    profiler_ = std::make_unique<OpProfiler>(device_ ? cuda_event_clock(ctx_.stream) : host_clock());
    ctx_.profiler = profiler_.get();  // (the host Ctx is process-wide: ~Trainer takes it back)
  }
}

Trainer::~Trainer() {
  if (profiler_) ctx_.profiler = nullptr;
}

void Trainer::report_op_profile() {
  if (!profiler_ || rank_ != 0) return;
  if (profiler_->steps() == 0) {  // (said, not silently skipped)
    if (opts_.log)
      *opts_.log << "op profile: no step profiled (a run's first two steps are not), " << opts_.op_profile_path
                 << " not written\n"
                 << std::flush;
    return;
  }
  if (opts_.log) *opts_.log << op_profile_table(*profiler_) << std::flush;
  write_file(opts_.op_profile_path, op_profile_json(*profiler_).dump(1) + "\n");
}

// Micro-batch m of n of a rank's slice (the slice itself for n = 1).
Batch Trainer::micro_batch(const Batch& slice, int m, int n) const {
  return n == 1 ? slice : slice_batch(slice, cfg_.model().seq_len(), m, n);
}

void Trainer::calibrate_if_needed() {
  if (!model_.needs_calibration()) return;
  // (one micro-batch's sequences: training's activation memory)
  const Batch warm = warmup_.next(rank_, world_);
  const int micros = cfg_.train().micro_batches();
  model_.calibrate(micro_batch(warm, 0, micros));
}

float Trainer::evaluate() {
  calibrate_if_needed();  // an evaluation before any step (not from a checkpoint)
  model_.set_training(false);
  double sum = 0;
  const int n = cfg_.train().eval_batches();
  const auto& moe = model_.moe_layers();
  held_out_.clear();
  held_out_depth_.clear();
  for (const auto& [l, layer] : moe) held_out_.push_back({l, std::vector<double>(cfg_.moe().num_experts(), 0.0)});
  std::vector<double> held_out_assigned(moe.size(), 0.0), held_out_items(moe.size(), 0.0);
  ProgressLine progress(opts_.log, "evaluation", n, opts_.progress_after_s, opts_.progress_every_s);
  held_out_compute_ = 0;
  auto& blocks = model_.blocks();
  for (size_t l = 0; l < blocks.size(); ++l)
    if (blocks[l].depth()) held_out_depth_.emplace_back(static_cast<int>(l), 0.0);
  // Each batch in train.micro_batches forwards, as training runs it (its
  // activation memory): `forwards` forwards of equal token counts in all.
  const int micros = cfg_.train().micro_batches(), forwards = n * micros;
  eval_stopped_ = false;
  for (int i = 0; i < n; ++i) {
    // A stop request ends the pass here, not after it: a long evaluation
    // kept a stopped run going for minutes, past a scheduler's grace period
    // and its checkpoint. (Agreed: every rank leaves at the same batch.)
    if (stop_agreed()) {
      eval_stopped_ = true;
      model_.set_training(true);
      return NAN;
    }
    const Batch batch = val_.fixed(i, rank_, world_);
    for (int part = 0; part < micros; ++part) {
      sum += model_.forward(micro_batch(batch, part, micros));
      held_out_compute_ += model_.forward_flops() / model_.dense_forward_flops() / forwards;
      for (auto& [l, kept] : held_out_depth_) kept += blocks[l].depth()->processed() / forwards;
      // The pass's shares: each forward's (already over every rank's tokens)
      // weighted by what it divides, used assignments or tokens. A forward of
      // a depth-routed MoE block routes the tokens its predictor kept (its
      // sequences' calls pooled, runtime/model.cc), maybe none: weighted
      // by count, such a forward adds nothing, where a mean over forwards
      // counted its zeros and left the loads summing under 1.
      for (size_t m = 0; m < moe.size(); ++m) {
        const RoutingStats& st = moe[m].second->stats();
        for (size_t g = 0; g < st.load.size(); ++g) held_out_[m].load[g] += st.load[g] * st.assigned;
        held_out_[m].dropped += st.dropped * st.assigned;
        held_out_[m].budget_dropped += st.budget_dropped * st.assigned;
        held_out_[m].unserved += st.unserved * st.items;
        held_out_[m].realized_cost += st.realized_cost * st.items;
        held_out_assigned[m] += st.assigned;
        held_out_items[m] += st.items;
      }
    }
    progress.done(i + 1);
  }
  for (size_t m = 0; m < held_out_.size(); ++m) {
    HeldOutRouting& h = held_out_[m];
    const double a = std::max(1.0, held_out_assigned[m]), t = std::max(1.0, held_out_items[m]);
    for (double& f : h.load) f /= a;
    h.dropped /= a;
    h.budget_dropped /= a;
    h.unserved /= t;
    h.realized_cost /= t;
    h.max_over_mean = *std::max_element(h.load.begin(), h.load.end()) * h.load.size();
  }
  model_.set_training(true);
  // This rank's kept fraction; every rank processes as many tokens.
  for (auto& [l, kept] : held_out_depth_) kept = world_mean(opts_.par, static_cast<float>(kept), "held-out depth");
  // (So is the compute: a causal depth predictor keeps other counts on each.)
  held_out_compute_ = world_mean(opts_.par, static_cast<float>(held_out_compute_), "held-out compute");
  return world_mean(opts_.par, static_cast<float>(sum / forwards), "validation loss");
}

void Trainer::restore(const std::string& dir, bool optimizer) {
  const TrainState st = load_checkpoint(dir, cfg_, model_, opts_.par, optimizer);
  step_ = st.step;
  optimizer_step_ = st.optimizer_step;
  tokens_seen_ = st.tokens_seen;
  bad_steps_ = st.bad_steps;
  consecutive_bad_ = st.bad_steps_in_a_row;
  train_.set_position(st.data_position);
  origin_ = st.origin;
  restored_from_ = dir;
  restored_data_ = st.data;
  restored_seconds_ = st.train_seconds;
}

std::string Trainer::data_summary() const {
  auto part = [&](const char* name, const Split& s, const std::string& unit) {
    return std::string(name) + " " + std::to_string(s.tokens()) + " " + unit;
  };
  return part("train", data_.train(), data_.train_unit()) + ", " + part("val", data_.val(), data_.val_unit());
}

void Trainer::init_from(const std::string& dir) {
  SY_CHECK(step_ == 0 && restored_from_.empty() && origin_.checkpoint.empty(),
           "Trainer::init_from: once, before any step or restore");
  const InitFrom f = init_from_checkpoint(dir, cfg_, model_, opts_.par);
  train_.set_position(f.data_position);
  origin_ = f.origin;
}

std::string Trainer::write_checkpoint() {
  TrainState st;
  st.step = step_;
  st.optimizer_step = optimizer_step_;
  st.tokens_seen = tokens_seen_;
  st.bad_steps = bad_steps_;
  st.bad_steps_in_a_row = consecutive_bad_;
  st.data_position = train_.position();
  st.data = data_summary();
  st.origin = origin_;
  st.train_seconds = restored_seconds_ + (run_start_s_ >= 0 ? now_s() - run_start_s_ : 0.0);
  return save_checkpoint(cfg_.train().checkpoint_dir(), cfg_, model_, st, opts_.par, cfg_.train().keep_checkpoints());
}

bool Trainer::stop_agreed() {
  if (!opts_.stop_requested) return false;
  const double mine = opts_.stop_requested() ? 1.0 : 0.0;
  if (!opts_.par || world_ == 1) return mine > 0;
  return opts_.par->world->all_reduce_sum(mine, "stop request") > 0;
}

std::string Trainer::diagnose_nonfinite(int64_t s, const StepResult& r) {
  // The same batch again, with each part's output checked; the first part
  // over all ranks is the answer (a non-finite value spreads to every rank
  // through the exchanges and reductions, so only the first says where).
  model_.set_step(s);
  const int parts = cfg_.model().n_layers() + 2;
  auto first_over_ranks = [&](int mine, int n) {
    if (!opts_.par || world_ == 1) return mine;
    Tensor f = Tensor::zeros({n}, DType::f64, host_ctx());
    if (mine >= 0) f.data<double>()[mine] = 1;
    opts_.par->world->all_reduce_sum(f, host_ctx().stream, "non-finite diagnosis");
    for (int i = 0; i < n; ++i)
      if (f.data<double>()[i] > 0) return i;
    return -1;
  };
  // The step's micro-batches again, in order, each forward then backward as
  // the step ran them, until one's forward is non-finite on some rank (every
  // rank stops at the same one: the answer is the collective's).
  ParamStore& params = model_.params();
  params.zero_grad(ctx_);
  const int micros = cfg_.train().micro_batches();
  int part = -1;
  for (int m = 0; m < micros && part < 0; ++m) {
    const Batch micro = micro_batch(step_slice_, m, micros);
    model_.set_micro_batch(m, micros);
    part = first_over_ranks(model_.first_nonfinite_part(micro), parts);
    if (part < 0) model_.backward();
  }
  std::ostringstream os;
  os << "step " << s << ": " << consecutive_bad_ << " steps in a row with a non-finite loss or gradient norm "
     << "(train.max_bad_steps = " << cfg_.train().max_bad_steps() << "; loss " << r.loss << ", gradient norm "
     << r.grad_norm << "); ";
  if (part >= 0) {
    os << "first non-finite output: " << model_.part_name(part);
    return os.str();
  }
  // Finite forwards: the first parameter whose gradient is not.
  const std::vector<Param*> all = params.all();
  int mine = -1;
  for (size_t i = 0; i < all.size() && mine < 0; ++i)
    if (ops::count_nonfinite(ctx_, all[i]->grad) > 0) mine = static_cast<int>(i);
  const int p = first_over_ranks(mine, static_cast<int>(all.size()));
  if (p >= 0) os << "the forward is finite; first non-finite gradient: " << all[p]->name;
  else os << "finite when run again (a transient fault?)";
  return os.str();
}

StepResult Trainer::step(int64_t step) {
  const auto& t = cfg_.train();
  StepResult r;
  const double start = now_s();
  // Routed attention's centroids start from a warm-up batch (k-means), not
  // from the first training batch: that would let its later tokens choose
  // the clusters its earlier tokens join. A restored checkpoint carries them.
  calibrate_if_needed();
  ParamStore& params = model_.params();
  params.zero_grad(ctx_);
  model_.set_step(step);
  RoutingStateCopy routing_before = copy_routing_state(model_);
  // Every rank draws the same global batch and trains on its slice, in
  // train.micro_batches forward and backward passes whose gradients add up
  // (the last one's backward overlaps the gradient all-reduce).
  step_slice_ = train_.next(rank_, world_);
  const Batch& slice = step_slice_;
  const int micros = t.micro_batches();
  // The MoE exchanges' time is the expert-parallel group's collective time
  // over the micro-batches (nothing else runs on that group in between).
  // NCCL's is timed by events: settled here (the step before's are done:
  // gradient_norm read a value after them) and after backward (the host
  // waits for its end, as gradient_norm's read would next), so a step counts
  // its own exchanges, none of the step before's.
  comm::Communicator* ep = opts_.par && opts_.par->ep_size > 1 ? opts_.par->ep.get() : nullptr;
  if (ep) ep->settle_comm_seconds();
  const double ep_seconds = ep ? ep->comm_seconds() : 0;
  tokens_seen_ += static_cast<int64_t>(t.batch()) * cfg_.model().seq_len();
  step_ = step;
  float loss_sum = 0.f;
  for (int m = 0; m < micros; ++m) {
    last_batch_ = micro_batch(slice, m, micros);
    model_.set_micro_batch(m, micros);
    loss_sum += model_.forward(last_batch_);
    r.flops += 3.0 * model_.forward_flops();  // backward ~ 2x forward
    if (reducer_ && m == micros - 1) {
      reducer_->begin();
      model_.backward([this](int64_t offset) { reducer_->ready(offset); });
      const ReduceTimes rt = reducer_->finish();
      r.all_reduce_s = rt.all_reduce_s;
      r.all_reduce_exposed_s = rt.exposed_s;
    } else {
      model_.backward();
    }
    for (const auto& [l, layer] : model_.moe_layers())  // (each forward and backward's own exchanges)
      r.all_to_all_bytes += layer->bytes_sent();
  }
  if (ep) {
    ep->settle_comm_seconds();
    r.all_to_all_s = ep->comm_seconds() - ep_seconds;
  }
  model_.end_step();
  // The gradients are the micro-batches' sum; their mean is 1/micros of it,
  // applied with the clip factor as AdamW reads them (exactly 1 for one).
  const float mean_of_sum = 1.f / static_cast<float>(micros);
  r.loss = world_mean(opts_.par, loss_sum * mean_of_sum, "training loss");
  r.grad_norm = gradient_norm(ctx_, params, opts_.par, scattered_grads()) * mean_of_sum;
  r.lr = learning_rate(t, step);
  // Loss and norm are the same on every rank (reduced over all of them), so
  // every rank makes the same choice.
  if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
    r.skipped = true;
    ++bad_steps_;
    ++consecutive_bad_;
    params.zero_grad(ctx_);
    params.finish_grads(ctx_);  // (really zeros: no non-finite gradient is left behind until the next step)
    put_back(model_, routing_before);
  } else {
    consecutive_bad_ = 0;
    // Clipping (Pascanu et al. 2013) as the update reads the gradients: the
    // bits of scaling them first, without a pass over them.
    ops::AdamWConfig adam{r.lr, t.beta1(), t.beta2(), t.eps(), t.weight_decay(),
                          ops::clip_scale(r.grad_norm, t.grad_clip()) * mean_of_sum};
    // This rank's elements (all of them unless the moments are sharded),
    // their views made once: the arenas never move.
    if (update_.empty()) update_ = owned_update(params, update_views_);
    ops::adamw_update(ctx_, update_, adam, ++optimizer_step_);
    if (params.moments_sharded()) {
      // ZeRO-1: then every rank's values to the others (runtime/optimizer_shard.h).
      // Timed by the groups' own clocks where their collectives return done
      // (MPI). NCCL's are queued with the step: timing them here would make
      // the host wait for the update, so they go untimed.
      comm::Communicator *w = opts_.par->world.get(), *rp = opts_.par->replicas.get();
      const bool timed = !w->stream_ordered() && !rp->stream_ordered();
      const double before = w->comm_seconds() + rp->comm_seconds();
      share_values(ctx_, params, *opts_.par);
      if (timed) r.share_values_s = w->comm_seconds() + rp->comm_seconds() - before;
    }
  }
  r.seconds = now_s() - start;
  return r;
}

TrainResult Trainer::run() {
  const auto& t = cfg_.train();
  // A resumed run appends to the metrics of the run it continues.
  MetricsWriter metrics(opts_.metrics_path, !restored_from_.empty());
  const int64_t tokens_per_step = static_cast<int64_t>(t.batch()) * cfg_.model().seq_len();
  const int64_t n_params = global_param_count(model_.params(), opts_.par);  // every rank: a collective
  const int64_t start = step_;
  if (opts_.log) {
    *opts_.log << run_summary(cfg_, n_params, data_.train().tokens(), data_.val().tokens(), data_.train_unit(),
                              data_.val_unit());
    if (!restored_from_.empty())
      *opts_.log << "resumed from " << restored_from_ << " after step " << start << " (" << tokens_seen_
                 << " tokens seen, batch " << train_.position() << " of the data stream)\n";
    // (Counted, not hashed: a change that keeps every count goes unseen. The
    // training part only: other validation data draws the same batches.)
    auto train_part = [](const std::string& d) { return d.substr(0, d.find(", val ")); };
    if (!restored_from_.empty() && !restored_data_.empty() && train_part(restored_data_) != train_part(data_summary()))
      *opts_.log << "note: the checkpoint's run drew its batches from " << restored_data_ << "; this run from "
                 << data_summary() << ": its batches from here are not those the uninterrupted run would have drawn\n";
    if (const std::string n = untrained_router_note(cfg_); !n.empty()) *opts_.log << "note: " << n << "\n";
    if (restored_from_.empty() && !origin_.checkpoint.empty()) {
      *opts_.log << "initialized from " << origin_.checkpoint << " (step " << origin_.step << " of its run";
      if (origin_.upcycled) *opts_.log << "; every expert a copy of its layer's dense FFN";
      if (origin_.upcycled && cfg_.train().upcycle_reinit() > 0)
        *opts_.log << " with a share " << cfg_.train().upcycle_reinit() << " of its hidden units re-drawn";
      *opts_.log << "), data stream from batch " << train_.position() << "\n";
    }
    const ParamStore& ps = model_.params();
    if (ps.moments_sharded()) {
      auto mib = [](int64_t values) {
        char b[32];
        std::snprintf(b, sizeof b, "%.1f MiB", 8.0 * static_cast<double>(values) / (1 << 20));
        return std::string(b);
      };
      const int64_t kept = ps.arena(ParamKind::dense).m.numel() + ps.arena(ParamKind::expert).m.numel();
      *opts_.log << "AdamW moments sharded (parallel.shard_optimizer): " << mib(kept) << " on rank 0 of "
                 << mib(ps.numel()) << " unsharded; the dense ones over " << ps.moment_parts(ParamKind::dense)
                 << " ranks";
      if (ps.arena(ParamKind::expert).numel() > 0)
        *opts_.log << ", each expert shard's over its " << ps.moment_parts(ParamKind::expert) << " replicas";
      if (reducer_ && (reducer_->scatters(ParamKind::dense) || reducer_->scatters(ParamKind::expert)))
        *opts_.log << "; gradients reduce-scattered over the same parts (parallel.reduce_scatter_grads)";
      *opts_.log << "\n";
    }
    opts_.log->flush();
  }

  TrainResult result;
  result.last_step = start;
  result.bad_steps = bad_steps_;
  const double t0 = now_s();
  run_start_s_ = t0;
  double interval_start = t0, interval_flops = 0, allreduce_s = 0, allreduce_exposed_s = 0, share_values_s = 0;
  int64_t interval_tokens = 0, interval_steps = 0, interval_waits = 0;
  float loss_sum = 0;
  int loss_count = 0;
  // One metrics line and progress line for step s.
  auto log_step = [&](int64_t s, const StepResult& r, bool eval_now) {
    StepLog log;
    log.step = s;
    log.steps = t.steps();
    log.world = world_;
    log.sharded = model_.params().moments_sharded();
    if (device_) {
      log.peak_tflops = device_->peak_tflops();
      log.device_bytes_high_water = ctx_.alloc->high_water();
      log.device_bytes_reserved = ctx_.alloc->reserved_high();
      if (opts_.par) log.host_staging_bytes = opts_.par->host_staging_bytes();
      log.host_waits_per_step = static_cast<double>(interval_waits) / std::max<int64_t>(1, interval_steps);
    } else {
      log.host_tensor_bytes_high_water = ctx_.alloc->high_water();
    }
    log.all_to_all_s = r.all_to_all_s;
    log.all_to_all_bytes = r.all_to_all_bytes;
    log.all_reduce_s = allreduce_s;
    log.all_reduce_exposed_s = allreduce_exposed_s;
    log.share_values_s = share_values_s;
    log.lr = r.lr;
    log.grad_norm = r.grad_norm;
    log.loss = loss_count > 0 ? loss_sum / loss_count : NAN;  // skipped steps do not count
    log.bad_steps = bad_steps_;
    // Routing statistics of this training step (the MoE layers' over its
    // micro-batches; the FLOPs its last forward's: this rank's last
    // micro-batch, whose tokens the per-token figures divide), before
    // evaluation reroutes.
    const RoutingSnapshot routing =
        routing_snapshot(model_, static_cast<int64_t>(last_batch_.inputs.size()));
    // The interval's rates end here: evaluation time is not training time.
    const double trained = now_s(), dt = std::max(1e-9, trained - interval_start);
    if (eval_now) {
      log.val_loss = evaluate();
      log.evaluated = !eval_stopped_;
      log.held_out = &held_out_;
      log.val_compute_fraction = held_out_compute_;
      result.final_val_loss = log.val_loss;
    }
    const double now = now_s();
    log.tokens_per_s = interval_tokens / dt;
    log.flops_per_s = interval_flops / dt;
    // (elapsed over every part of a resumed run; the ETA from this part's rate)
    log.elapsed_s = restored_seconds_ + (now - t0);
    log.eta_s = (now - t0) / (s - start) * (t.steps() - s);
    result.tokens_per_s = log.tokens_per_s;
    metrics.write(metrics_line(log, routing));
    if (opts_.log) {
      *opts_.log << progress_line(log, routing) << "\n";
      opts_.log->flush();
    }
    allreduce_s = allreduce_exposed_s = share_values_s = 0;
    interval_start = now_s();  // evaluation time is not training time
    interval_tokens = interval_steps = interval_waits = 0;
    interval_flops = 0;
    loss_sum = 0;
    loss_count = 0;
  };

  for (int64_t s = start + 1; s <= t.steps(); ++s) {
    if (opts_.before_step) opts_.before_step(s, model_);
    const int64_t waits_before = host_waits();
    // (the first steps find algorithms and memory)
    const bool profiled =
        profiler_ && s > start + 2 && (opts_.op_profile_steps <= 0 || s > t.steps() - opts_.op_profile_steps);
    if (profiled) profiler_->begin_step();
    const StepResult r = step(s);
    if (profiled) profiler_->end_step();
    interval_waits += host_waits() - waits_before;
    ++interval_steps;
    result.last_step = s;
    result.bad_steps = bad_steps_;
    result.losses.push_back(r.loss);
    allreduce_s += r.all_reduce_s;
    allreduce_exposed_s += r.all_reduce_exposed_s;
    share_values_s += r.share_values_s;
    if (s > start + 2) {
      ++result.timed_steps;
      result.step_s += r.seconds;
      result.all_reduce_s += r.all_reduce_s;
      result.all_reduce_exposed_s += r.all_reduce_exposed_s;
      result.all_to_all_s += r.all_to_all_s;
      result.all_to_all_bytes += r.all_to_all_bytes;
    }
    if (s == start + 1) result.first_loss = r.loss;
    result.final_loss = r.loss;
    if (!r.skipped) {
      loss_sum += r.loss;
      ++loss_count;
    }
    interval_tokens += tokens_per_step;
    interval_flops += r.flops;

    if (consecutive_bad_ >= t.max_bad_steps()) {
      log_step(s, r, false);
      result.stop = TrainResult::Stop::nonfinite;
      result.message = diagnose_nonfinite(s, r);
      metrics.close();
      return result;
    }
    const bool eval_now = s == t.steps() || (t.eval_interval() > 0 && s % t.eval_interval() == 0);
    bool stop = stop_agreed();
    // (No evaluation once stopping: the checkpoint comes first.)
    if (eval_now || stop || s % t.log_interval() == 0) log_step(s, r, eval_now && !stop);
    stop = stop || (eval_now && eval_stopped_);
    const bool due = t.checkpoint_interval() > 0 && (s % t.checkpoint_interval() == 0 || s == t.steps());
    if (due || (stop && opts_.checkpoint_on_stop)) {
      const double before = now_s();
      result.checkpoint = write_checkpoint();
      interval_start += now_s() - before;  // nor is writing a checkpoint
    }
    if (stop) {
      result.stop = TrainResult::Stop::signal;
      metrics.close();
      report_op_profile();
      return result;
    }
  }
  metrics.close();
  report_op_profile();
  return result;
}

}  // namespace sy
