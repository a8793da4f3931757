#include "runtime/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <thread>

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

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Per-layer routing and compute statistics of the model's last forward, as a
// metrics object; a short form for the progress line goes to `brief`.
nlohmann::json routing_metrics(Transformer& model, int64_t tokens_per_step, std::string& brief) {
  nlohmann::json line = nlohmann::json::object();
  char b[96];
  for (const auto& [l, layer] : model.moe_layers()) {
    const MoeStats& st = layer->stats();
    line["moe"].push_back({{"layer", l}, {"load", st.load}, {"max_over_mean", st.max_over_mean},
                           {"cv", st.cv}, {"dropped", st.dropped}, {"entropy", st.entropy},
                           {"capacity", st.capacity}, {"lb_loss", st.lb_loss}, {"z_loss", st.z_loss},
                           {"budget_loss", st.budget_loss}, {"expected_cost", st.expected_cost}});
    std::snprintf(b, sizeof b, " | L%d max/mean %.2f drop %.3f", l, st.max_over_mean, st.dropped);
    brief += b;
  }
  if (!model.moe_layers().empty()) line["aux_loss"] = model.aux_loss();
  // Compute actually spent against the same model without depth routing.
  const double tokens = static_cast<double>(tokens_per_step);
  const double spent = model.forward_flops(), dense = model.dense_forward_flops();
  line["flops_per_token"] = spent / tokens;
  line["dense_flops_per_token"] = dense / tokens;
  line["compute_fraction"] = spent / dense;
  for (size_t l = 0; l < model.blocks().size(); ++l) {
    const Block& blk = model.blocks()[l];
    nlohmann::json bl = {{"layer", l}, {"flops_per_token", blk.forward_flops() / tokens},
                         {"dense_flops_per_token", blk.dense_flops() / tokens}};
    if (const DepthRouter* d = blk.depth()) {
      bl["processed"] = d->stats().processed;
      bl["predictor_accuracy"] = d->stats().predictor_accuracy;
      bl["predictor_bce"] = d->stats().predictor_bce;
      bl["budget_loss"] = d->stats().budget_loss;
      std::snprintf(b, sizeof b, " | L%zu kept %.2f acc %.2f", l, d->stats().processed,
                    d->stats().predictor_accuracy);
      brief += b;
    }
    if (const auto* sa = dynamic_cast<const SparseSelfAttention*>(&blk.attention())) {
      const SparseAttentionStats& st = sa->stats();
      bl["attention_pair_fraction"] = st.pair_fraction;
      bl["cluster_size_mean"] = st.cluster_size_mean;
      bl["cluster_size_max"] = st.cluster_size_max;
      bl["centroid_drift"] = st.centroid_drift;
      bl["commitment_loss"] = st.commitment_loss;
    }
    line["layers"].push_back(bl);
  }
  if (spent < dense) {
    std::snprintf(b, sizeof b, " | compute %.2fx dense", spent / dense);
    brief += b;
  }
  return line;
}

// Mean of one value over all ranks.
float world_mean(ParallelContext* par, float v, const char* what) {
  if (!par || par->world_size() == 1) return v;
  double d = v;
  par->world->all_reduce_sum(&d, 1, what);
  return static_cast<float>(d / par->world_size());
}

[[noreturn]] void inject_fault(const std::string& kind, int rank, int64_t step) {
  if (kind == "hang")
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  if (kind == "exit") std::_Exit(3);
  throw Error("injected fault on rank " + std::to_string(rank) + " at step " + std::to_string(step));
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
      data_(make_dataset(corpus_for(cfg), cfg.data().val_fraction(), cfg.model().seq_len())),
      model_(cfg, opts_.par),
      train_(&data_.train, cfg.train().batch(), cfg.model().seq_len(), cfg.train().seed() + 1),
      val_(&data_.val, cfg.train().batch(), cfg.model().seq_len(), 0) {
  if (opts_.par) rank_ = opts_.par->rank(), world_ = opts_.par->world_size();
  if (cfg.train().batch() % world_ != 0)
    throw ConfigError("train.batch = " + std::to_string(cfg.train().batch()) + ": the global batch must split evenly over " +
                      std::to_string(world_) + " ranks");
  if (rank_ != 0) opts_.log = nullptr, opts_.metrics_path.clear();
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
  for (int i = 0; i < n; ++i) {
    sum += model_.forward(slice_batch(val_.fixed(i), T, rank_, world_));
    // Every batch routes the same number of tokens, so the pass's load is the
    // mean of the batches' load fractions (already summed over ranks).
    for (size_t m = 0; m < moe.size(); ++m) {
      const MoeStats& st = moe[m].second->stats();
      for (size_t g = 0; g < st.load.size(); ++g) held_out_[m].load[g] += st.load[g] / n;
      held_out_[m].dropped += st.dropped / n;
    }
    progress.done(i + 1);
  }
  for (HeldOutRouting& h : held_out_)
    h.max_over_mean = *std::max_element(h.load.begin(), h.load.end()) * h.load.size();
  model_.set_training(true);
  return world_mean(opts_.par, static_cast<float>(sum / n), "validation loss");
}

TrainResult Trainer::run() {
  const auto& t = cfg_.train();
  MetricsWriter metrics(opts_.metrics_path);
  std::vector<Param*> params = model_.params().all();
  ops::AdamWConfig adam{t.lr(), t.beta1(), t.beta2(), t.eps(), t.weight_decay()};
  const int64_t tokens_per_step = static_cast<int64_t>(t.batch()) * cfg_.model().seq_len();
  const int64_t n_params = global_param_count(model_.params(), opts_.par);  // every rank: a collective

  if (opts_.log) {
    const auto& at = cfg_.attention();
    if (at.kind() != switchyard::AttentionConfig::DENSE) {
      // What this attention costs at long context: n = 4096 (k = round(sqrt n) = 64
      // clusters unless num_clusters is set), per layer and sequence.
      const int64_t n = 4096, D = cfg_.model().d_model() / cfg_.model().n_heads();
      const AttentionPairs p = attention_pairs(at, n, cfg_.model().n_heads());
      const double per_pair = 4.0 * D * cfg_.model().n_heads();  // scores + weighted sum, all heads
      char b[256];
      std::snprintf(b, sizeof b,
                    "attention FLOPs per layer at n=%lld (k=%lld clusters): %.3g vs dense %.3g (%.2f%%)\n",
                    static_cast<long long>(n), static_cast<long long>(cluster_count(at, n)),
                    p.sparse * per_pair, p.dense * per_pair, 100.0 * p.sparse / p.dense);
      *opts_.log << b;
    }
    *opts_.log << "model: " << n_params << " parameters, " << cfg_.model().n_layers()
               << " layers, d_model " << cfg_.model().d_model() << "; data: "
               << data_.train.size() << " train / " << data_.val.size() << " val bytes\n";
    opts_.log->flush();
  }

  TrainResult result;
  const double t0 = now_s();
  double interval_start = t0, interval_flops = 0;
  int64_t interval_tokens = 0;
  float loss_sum = 0;
  int loss_count = 0;
  const int64_t bucket_bytes = static_cast<int64_t>(cfg_.parallel().grad_bucket_mb() * (1 << 20));
  double allreduce_s = 0;
  for (int64_t step = 1; step <= t.steps(); ++step) {
    if (step == opts_.fault_step && rank_ == opts_.fault_rank) inject_fault(opts_.fault, rank_, step);
    const double step_start = now_s();
    double step_allreduce = 0;
    model_.params().zero_grad();
    // Every rank draws the same global batch and trains on its slice.
    const float local_loss = model_.forward(slice_batch(train_.next(), cfg_.model().seq_len(), rank_, world_));
    model_.backward();
    if (opts_.par && world_ > 1) {
      const double before = opts_.par->world->comm_seconds() + opts_.par->replicas->comm_seconds();
      all_reduce_gradients(model_.params(), *opts_.par, bucket_bytes);
      step_allreduce = opts_.par->world->comm_seconds() + opts_.par->replicas->comm_seconds() - before;
      allreduce_s += step_allreduce;
    }
    const float loss = world_mean(opts_.par, local_loss, "training loss");
    result.losses.push_back(loss);
    const float grad_norm = clip_gradients(model_.params(), opts_.par, t.grad_clip());
    adam.lr = learning_rate(t, step);
    for (Param* p : params) ops::adamw_update(p->value, p->grad, p->m, p->v, adam, step, p->decay);
    if (step > 2) {
      ++result.timed_steps;
      result.step_s += now_s() - step_start;
      result.all_reduce_s += step_allreduce;
      for (const auto& [l, layer] : model_.moe_layers()) {
        result.all_to_all_s += layer->stats().comm_s;
        result.all_to_all_bytes += layer->stats().bytes_sent;
      }
    }
    if (step == 1) result.first_loss = loss;
    result.final_loss = loss;
    loss_sum += loss;
    ++loss_count;
    interval_tokens += tokens_per_step;
    interval_flops += 3.0 * model_.forward_flops();  // backward ~ 2x forward

    const bool eval_now =
        step == t.steps() || (t.eval_interval() > 0 && step % t.eval_interval() == 0);
    const bool log_now = eval_now || step % t.log_interval() == 0;
    if (!log_now) continue;
    // Routing statistics of this training step (evaluation below reroutes).
    std::string routing_short;
    nlohmann::json line = routing_metrics(model_, tokens_per_step, routing_short);
    float val_loss = NAN;
    if (eval_now) {
      val_loss = evaluate();
      result.final_val_loss = val_loss;
    }
    const double now = now_s(), dt = std::max(1e-9, now - interval_start);
    const double tok_s = interval_tokens / dt, elapsed = now - t0;
    const double eta = elapsed / step * (t.steps() - step);
    const float mean_loss = loss_sum / loss_count;
    result.tokens_per_s = tok_s;
    line["step"] = step;
    line["loss"] = mean_loss;
    if (eval_now) {
      line["val_loss"] = val_loss;
      for (const HeldOutRouting& h : held_out_)
        line["val_moe"].push_back({{"layer", h.layer}, {"load", h.load}, {"max_over_mean", h.max_over_mean},
                                   {"dropped", h.dropped}});
    }
    line["lr"] = adam.lr;
    line["grad_norm"] = grad_norm;
    line["tokens_per_s"] = tok_s;
    line["tflops"] = interval_flops / dt / 1e12;
    line["elapsed_s"] = elapsed;
    if (world_ > 1) {
      double a2a = 0;
      for (const auto& [l, layer] : model_.moe_layers()) a2a += layer->stats().comm_s;
      line["ranks"] = world_;
      line["comm_all_to_all_s"] = a2a;       // last step, all MoE layers
      line["comm_all_reduce_s"] = allreduce_s;  // since the last log line
    }
    allreduce_s = 0;
    metrics.write(line);
    if (opts_.log) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "step %6lld/%d | loss %.4f", static_cast<long long>(step),
                    t.steps(), mean_loss);
      std::string s = buf;
      if (eval_now) {
        std::snprintf(buf, sizeof buf, " | val %.4f", val_loss);
        s += buf;
        for (const HeldOutRouting& h : held_out_) {
          std::snprintf(buf, sizeof buf, " (L%d max/mean %.2f)", h.layer, h.max_over_mean);
          s += buf;
        }
      }
      std::snprintf(buf, sizeof buf, " | lr %.2e | %.1fk tok/s | %.2f GFLOP/s | ETA %s", adam.lr,
                    tok_s / 1e3, interval_flops / dt / 1e9, format_duration(eta).c_str());
      *opts_.log << s << buf << routing_short << "\n";
      opts_.log->flush();
    }
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
