#include "runtime/step_metrics.h"

#include <cstdio>

#include "runtime/metrics.h"

namespace sy {

RoutingSnapshot routing_snapshot(Transformer& model, int64_t tokens_per_step) {
  RoutingSnapshot snap;
  nlohmann::json& line = snap.metrics;
  char b[128];
  for (const auto& [l, layer] : model.moe_layers()) {
    const RoutingStats& st = layer->stats();
    line["moe"].push_back({{"layer", l}, {"load", st.load}, {"max_over_mean", st.max_over_mean}, {"cv", st.cv},
                           {"dropped", st.dropped}, {"unserved", st.unserved}, {"entropy", st.entropy},
                           {"capacity", st.capacity}, {"lb_loss", st.lb_loss}, {"z_loss", st.z_loss},
                           {"budget_loss", st.budget_loss}, {"expected_cost", st.expected_cost}});
    std::snprintf(b, sizeof b, " | L%d max/mean %.2f drop %.3f unserved %.3f", l, st.max_over_mean, st.dropped,
                  st.unserved);
    snap.brief += b;
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
      std::snprintf(b, sizeof b, " | L%zu kept %.2f acc %.2f", l, d->stats().processed, d->stats().predictor_accuracy);
      snap.brief += b;
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
    snap.brief += b;
  }
  return snap;
}

nlohmann::json metrics_line(const StepLog& s, const RoutingSnapshot& r) {
  nlohmann::json line = r.metrics;
  line["step"] = s.step;
  line["loss"] = s.loss;
  if (s.evaluated) {
    line["val_loss"] = s.val_loss;
    for (const HeldOutRouting& h : *s.held_out)
      line["val_moe"].push_back(
          {{"layer", h.layer}, {"load", h.load}, {"max_over_mean", h.max_over_mean}, {"dropped", h.dropped},
           {"unserved", h.unserved}});
  }
  line["lr"] = s.lr;
  line["grad_norm"] = s.grad_norm;
  line["bad_steps"] = s.bad_steps;
  line["tokens_per_s"] = s.tokens_per_s;
  line["tflops"] = s.flops_per_s / 1e12;
  line["elapsed_s"] = s.elapsed_s;
  if (s.world > 1) {
    line["ranks"] = s.world;
    line["comm_all_to_all_s"] = s.all_to_all_s;
    line["comm_all_reduce_s"] = s.all_reduce_s;
    line["comm_all_reduce_exposed_s"] = s.all_reduce_exposed_s;
  }
  return line;
}

std::string progress_line(const StepLog& s, const RoutingSnapshot& r) {
  char b[256];
  std::snprintf(b, sizeof b, "step %6lld/%lld | loss %.4f", static_cast<long long>(s.step),
                static_cast<long long>(s.steps), s.loss);
  std::string out = b;
  if (s.evaluated) {
    std::snprintf(b, sizeof b, " | val %.4f", s.val_loss);
    out += b;
    for (const HeldOutRouting& h : *s.held_out) {
      std::snprintf(b, sizeof b, " (L%d max/mean %.2f)", h.layer, h.max_over_mean);
      out += b;
    }
  }
  std::snprintf(b, sizeof b, " | lr %.2e | %.1fk tok/s | %.2f GFLOP/s | ETA %s", s.lr, s.tokens_per_s / 1e3,
                s.flops_per_s / 1e9, format_duration(s.eta_s).c_str());
  out += b;
  if (s.bad_steps > 0) out += " | bad steps " + std::to_string(s.bad_steps);
  return out + r.brief;
}

nlohmann::json eval_metrics_line(const EvalReport& e) {
  nlohmann::json line = {{"step", e.step}, {"eval_only", true}, {"val_loss", e.val_loss}};
  for (const HeldOutRouting& h : e.moe)
    line["val_moe"].push_back(
        {{"layer", h.layer}, {"load", h.load}, {"max_over_mean", h.max_over_mean}, {"dropped", h.dropped}});
  for (const auto& [l, kept] : e.depth) line["val_depth"].push_back({{"layer", l}, {"processed", kept}});
  return line;
}

std::string eval_progress_line(const EvalReport& e) {
  char b[128];
  std::snprintf(b, sizeof b, "eval step %lld | val %.4f", static_cast<long long>(e.step), e.val_loss);
  std::string out = b;
  for (const HeldOutRouting& h : e.moe) {
    std::snprintf(b, sizeof b, " | L%d max/mean %.2f drop %.3f", h.layer, h.max_over_mean, h.dropped);
    out += b;
  }
  for (const auto& [l, kept] : e.depth) {
    std::snprintf(b, sizeof b, " | L%d kept %.2f", l, kept);
    out += b;
  }
  return out;
}

std::string run_summary(const Config& cfg, int64_t parameters, int64_t train_bytes, int64_t val_bytes) {
  std::string out;
  char b[256];
  const auto& at = cfg.attention();
  if (at.kind() != switchyard::AttentionConfig::DENSE) {
    // What this attention costs at long context: n = 4096 (k = round(sqrt n) = 64
    // clusters unless num_clusters is set), per layer and sequence.
    const int64_t n = 4096, D = cfg.model().d_model() / cfg.model().n_heads();
    const AttentionPairs p = attention_pairs(at, n, cfg.model().n_heads());
    const double per_pair = 4.0 * D * cfg.model().n_heads();  // scores + weighted sum, all heads
    std::snprintf(b, sizeof b, "attention FLOPs per layer at n=%lld (k=%lld clusters): %.3g vs dense %.3g (%.2f%%)\n",
                  static_cast<long long>(n), static_cast<long long>(cluster_count(at, n)), p.sparse * per_pair,
                  p.dense * per_pair, 100.0 * p.sparse / p.dense);
    out += b;
  }
  std::snprintf(b, sizeof b, "model: %lld parameters, %d layers, d_model %d; data: %lld train / %lld val bytes\n",
                static_cast<long long>(parameters), cfg.model().n_layers(), cfg.model().d_model(),
                static_cast<long long>(train_bytes), static_cast<long long>(val_bytes));
  return out + b;
}

}  // namespace sy
