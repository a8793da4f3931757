#include "runtime/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ostream>

#include "ops/adamw.h"
#include "runtime/metrics.h"

namespace sy {

namespace {

std::string corpus_for(const Config& cfg) {
  const auto& d = cfg.data();
  if (d.source() == switchyard::DataConfig::TEXT_FILE) return read_file_bytes(d.path());
  return synthetic_corpus(cfg.train().seed(), d.synthetic_bytes(),
                          {d.synthetic_tasks(), d.copy_gap_min(), d.copy_gap_max()});
}

std::unique_ptr<DeviceRuntime> device_for(const Config& cfg) {
  if (cfg.backend() != switchyard::Config::CUDA) return nullptr;
  return DeviceRuntime::create(0);
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
      device_(device_for(cfg)),
      ctx_(device_ ? device_->ctx() : host_ctx()),
      data_(make_dataset(corpus_for(cfg), cfg.data().val_fraction(), cfg.model().seq_len())),
      model_(ctx_, cfg, opts_.par),
      train_(&data_.train, cfg.train().batch(), cfg.model().seq_len(), cfg.train().seed() + 1),
      val_(&data_.val, cfg.train().batch(), cfg.model().seq_len(), 0),
      // Training text the loss never sees at step 1: another seed's windows.
      warmup_(&data_.train, cfg.train().batch(), cfg.model().seq_len(), cfg.train().seed() + 2) {
  if (opts_.par) rank_ = opts_.par->rank(), world_ = opts_.par->world_size();
  if (cfg.train().batch() % world_ != 0)
    throw ConfigError("train.batch = " + std::to_string(cfg.train().batch()) + ": the global batch must split evenly over " +
                      std::to_string(world_) + " ranks");
  if (rank_ != 0) opts_.log = nullptr, opts_.metrics_path.clear();
  if (opts_.par && world_ > 1)
    reducer_ = std::make_unique<GradientReducer>(ctx_, model_.params(), *opts_.par,
                                                 static_cast<int64_t>(cfg.parallel().grad_bucket_mb() * (1 << 20)),
                                                 cfg.parallel().overlap_grad_reduce());
}

float Trainer::evaluate() {
  model_.set_training(false);
  double sum = 0;
  const int64_t T = cfg_.model().seq_len();
  const int n = cfg_.train().eval_batches();
  const auto& moe = model_.moe_layers();
  held_out_.clear();
  for (const auto& [l, layer] : moe) held_out_.push_back({l, std::vector<double>(cfg_.moe().num_experts(), 0.0)});
  ProgressLine progress(opts_.log, "evaluation", n, opts_.progress_after_s, opts_.progress_every_s);
  held_out_compute_ = 0;
  for (int i = 0; i < n; ++i) {
    sum += model_.forward(slice_batch(val_.fixed(i), T, rank_, world_));
    held_out_compute_ += model_.forward_flops() / model_.dense_forward_flops() / n;
    // Every batch routes the same number of tokens, so the pass's load is the
    // mean of the batches' load fractions (already summed over ranks).
    for (size_t m = 0; m < moe.size(); ++m) {
      const RoutingStats& st = moe[m].second->stats();
      for (size_t g = 0; g < st.load.size(); ++g) held_out_[m].load[g] += st.load[g] / n;
      held_out_[m].dropped += st.dropped / n;
      held_out_[m].unserved += st.unserved / n;
      held_out_[m].realized_cost += st.realized_cost / n;
      held_out_[m].budget_dropped += st.budget_dropped / n;
    }
    progress.done(i + 1);
  }
  for (HeldOutRouting& h : held_out_)
    h.max_over_mean = *std::max_element(h.load.begin(), h.load.end()) * h.load.size();
  model_.set_training(true);
  return world_mean(opts_.par, static_cast<float>(sum / n), "validation loss");
}

StepResult Trainer::step(int64_t step) {
  const auto& t = cfg_.train();
  StepResult r;
  const double start = now_s();
  ParamStore& params = model_.params();
  params.zero_grad(ctx_);
  model_.set_step(step);
  // Every rank draws the same global batch and trains on its slice.
  const float local_loss = model_.forward(slice_batch(train_.next(), cfg_.model().seq_len(), rank_, world_));
  if (reducer_) {
    reducer_->begin();
    model_.backward([this](int64_t offset) { reducer_->ready(offset); });
    const ReduceTimes rt = reducer_->finish();
    r.all_reduce_s = rt.all_reduce_s;
    r.all_reduce_exposed_s = rt.exposed_s;
  } else {
    model_.backward();
  }
  model_.end_step();
  r.loss = world_mean(opts_.par, local_loss, "training loss");
  r.grad_norm = clip_gradients(ctx_, params, opts_.par, t.grad_clip());
  r.lr = learning_rate(t, step);
  ops::AdamWConfig adam{r.lr, t.beta1(), t.beta2(), t.eps(), t.weight_decay()};
  std::vector<ops::AdamWParam> update;
  for (Param* p : params.all()) update.push_back({&p->value, &p->grad, &p->m, &p->v, p->decay});
  ops::adamw_update(ctx_, update, adam, step);
  r.seconds = now_s() - start;
  for (const auto& [l, layer] : model_.moe_layers()) {
    r.all_to_all_s += layer->comm_seconds();
    r.all_to_all_bytes += layer->bytes_sent();
  }
  return r;
}

TrainResult Trainer::run() {
  const auto& t = cfg_.train();
  MetricsWriter metrics(opts_.metrics_path);
  const int64_t tokens_per_step = static_cast<int64_t>(t.batch()) * cfg_.model().seq_len();
  const int64_t n_params = global_param_count(model_.params(), opts_.par);  // every rank: a collective
  if (opts_.log) {
    *opts_.log << run_summary(cfg_, n_params, static_cast<int64_t>(data_.train.size()),
                              static_cast<int64_t>(data_.val.size()));
    opts_.log->flush();
  }

  // Routed attention's centroids start from a warm-up batch (k-means), not
  // from the first training batch: that would let its later tokens choose
  // the clusters its earlier tokens join.
  if (model_.needs_calibration())
    model_.calibrate(slice_batch(warmup_.next(), cfg_.model().seq_len(), rank_, world_));

  TrainResult result;
  const double t0 = now_s();
  double interval_start = t0, interval_flops = 0, allreduce_s = 0, allreduce_exposed_s = 0;
  int64_t interval_tokens = 0;
  float loss_sum = 0;
  int loss_count = 0;
  for (int64_t s = 1; s <= t.steps(); ++s) {
    if (opts_.before_step) opts_.before_step(s);
    const StepResult r = step(s);
    result.losses.push_back(r.loss);
    allreduce_s += r.all_reduce_s;
    allreduce_exposed_s += r.all_reduce_exposed_s;
    if (s > 2) {
      ++result.timed_steps;
      result.step_s += r.seconds;
      result.all_reduce_s += r.all_reduce_s;
      result.all_reduce_exposed_s += r.all_reduce_exposed_s;
      result.all_to_all_s += r.all_to_all_s;
      result.all_to_all_bytes += r.all_to_all_bytes;
    }
    if (s == 1) result.first_loss = r.loss;
    result.final_loss = r.loss;
    loss_sum += r.loss;
    ++loss_count;
    interval_tokens += tokens_per_step;
    interval_flops += 3.0 * model_.forward_flops();  // backward ~ 2x forward

    const bool eval_now = s == t.steps() || (t.eval_interval() > 0 && s % t.eval_interval() == 0);
    if (!eval_now && s % t.log_interval() != 0) continue;
    StepLog log;
    log.step = s;
    log.steps = t.steps();
    log.world = world_;
    log.all_to_all_s = r.all_to_all_s;
    log.all_reduce_s = allreduce_s;
    log.all_reduce_exposed_s = allreduce_exposed_s;
    log.lr = r.lr;
    log.grad_norm = r.grad_norm;
    log.loss = loss_sum / loss_count;
    // Routing statistics of this training step, before evaluation reroutes.
    const RoutingSnapshot routing = routing_snapshot(model_, tokens_per_step);
    if (eval_now) {
      log.evaluated = true;
      log.val_loss = evaluate();
      log.held_out = &held_out_;
      log.val_compute_fraction = held_out_compute_;
      result.final_val_loss = log.val_loss;
    }
    const double now = now_s(), dt = std::max(1e-9, now - interval_start);
    log.tokens_per_s = interval_tokens / dt;
    log.flops_per_s = interval_flops / dt;
    log.elapsed_s = now - t0;
    log.eta_s = log.elapsed_s / s * (t.steps() - s);
    result.tokens_per_s = log.tokens_per_s;
    metrics.write(metrics_line(log, routing));
    if (opts_.log) {
      *opts_.log << progress_line(log, routing) << "\n";
      opts_.log->flush();
    }
    allreduce_s = allreduce_exposed_s = 0;
    interval_start = now_s();  // evaluation time is not training time
    interval_tokens = 0;
    interval_flops = 0;
    loss_sum = 0;
    loss_count = 0;
  }
  metrics.close();
  return result;
}

}  // namespace sy
