#include "runtime/step_metrics.h"

#include <cstdio>

#include "runtime/cost_model.h"
#include "runtime/metrics.h"

namespace sy {

RoutingSnapshot routing_snapshot(Transformer& model, int64_t tokens_per_step) {
  RoutingSnapshot snap;
  nlohmann::json& line = snap.metrics;
  char b[160];
  // MoE costs per layer (dense-FFN units per token of the layer's tokens) and
  // in total (per model token: a layer in a depth-routed block sees only the
  // processed fraction of the tokens).
  double total_realized = 0, total_before = 0, total_expected = 0, total_budget = 0;
  for (const auto& [l, layer] : model.moe_layers()) {
    const RoutingStats& st = layer->stats();
    const DepthRouter* depth = model.blocks()[l].depth();
    const double f = depth ? depth->processed() : 1.0;
    total_realized += f * st.realized_cost;
    total_before += f * st.cost_before_budget;
    total_expected += f * st.expected_cost;
    total_budget += f * st.budget;
    line["moe"].push_back({{"layer", l}, {"load", st.load}, {"max_over_mean", st.max_over_mean}, {"cv", st.cv},
                           {"dropped", st.dropped}, {"unserved", st.unserved}, {"entropy", st.entropy},
                           {"capacity", st.capacity}, {"lb_loss", st.lb_loss}, {"z_loss", st.z_loss},
                           {"budget_loss", st.budget_loss}, {"realized_cost", st.realized_cost},
                           {"cost_before_budget", st.cost_before_budget}, {"expected_cost", st.expected_cost},
                           {"budget", st.budget}, {"budget_dropped", st.budget_dropped}});
    std::snprintf(b, sizeof b, " | L%d max/mean %.2f drop %.3f unserved %.3f", l, st.max_over_mean, st.dropped,
                  st.unserved);
    snap.brief += b;
    // (Only where a budget is asked for: moe.budget defaults to 1, which a
    // top-2 router's cost of 2 exceeds with nothing enforcing or penalising it.)
    const bool budgeted = st.budget_applies || model.budget_target() > 0;
    if (budgeted && (st.budget_dropped > 0 || st.budget_loss > 0 || st.realized_cost > st.budget)) {
      std::snprintf(b, sizeof b, " cost %.3f/%.3f bdrop %.3f", st.realized_cost, st.budget, st.budget_dropped);
      snap.brief += b;
    }
  }
  if (!model.moe_layers().empty()) {
    line["aux_loss"] = model.aux_loss();
    line["moe_cost"] = {{"realized", total_realized}, {"before_budget", total_before},
                        {"expected", total_expected}, {"budget", total_budget}};
  }
  // Compute actually spent against the same model run dense: dense attention,
  // the dense FFN in every FFN position, every token through every block.
  const double tokens = static_cast<double>(tokens_per_step);
  const double spent = model.forward_flops(), dense = model.dense_forward_flops();
  const double unit = model.cost_unit() * tokens;  // dense-FFN units per token
  line["flops_per_token"] = spent / tokens;
  line["dense_flops_per_token"] = dense / tokens;
  line["compute_fraction"] = spent / dense;
  const ComputeParts parts = model.compute_parts();
  nlohmann::json budget = {{"compute_fraction", spent / dense},
                           {"parts", {{"head", parts.head / dense},
                                      {"attention", parts.attention / dense},
                                      {"ffn", parts.ffn / dense},
                                      {"routers", parts.routers / dense}}},
                           {"saved", {{"attention", (parts.dense_attention - parts.attention) / dense},
                                      {"ffn", (parts.dense_ffn - parts.ffn) / dense}}}};
  if (model.budget_target() > 0) budget["target"] = model.budget_target();
  if (!model.moe_layers().empty()) budget["moe_budget"] = model.moe_budget();
  line["budget"] = budget;
  for (size_t l = 0; l < model.blocks().size(); ++l) {
    const Block& blk = model.blocks()[l];
    nlohmann::json bl = {{"layer", l}, {"flops_per_token", blk.forward_flops() / tokens},
                         {"dense_flops_per_token", blk.dense_flops() / tokens},
                         {"cost", blk.forward_flops() / unit}, {"dense_cost", blk.dense_flops() / unit},
                         {"attention_cost", blk.attention_flops() / unit}, {"ffn_cost", blk.ffn_flops() / unit},
                         {"router_cost", blk.router_flops() / unit}};
    if (const DepthRouter* d = blk.depth()) {
      // The first depth block's stats() reads every depth router's statistics
      // from the device in one copy; the others' come from that copy.
      const DepthStats st = d->stats();
      bl["processed"] = st.processed;
      bl["predictor_accuracy"] = st.predictor_accuracy;
      bl["predictor_bce"] = st.predictor_bce;
      bl["budget_loss"] = st.budget_loss;
      std::snprintf(b, sizeof b, " | L%zu kept %.2f acc %.2f", l, st.processed, st.predictor_accuracy);
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
  if (spent < dense || model.budget_target() > 0) {
    std::snprintf(b, sizeof b, " | compute %.2fx dense", spent / dense);
    snap.brief += b;
    if (model.budget_target() > 0) {
      std::snprintf(b, sizeof b, " (target %.2f)", model.budget_target());
      snap.brief += b;
    }
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
           {"unserved", h.unserved}, {"realized_cost", h.realized_cost}, {"budget_dropped", h.budget_dropped}});
    line["val_compute_fraction"] = s.val_compute_fraction;
  }
  line["lr"] = s.lr;
  line["grad_norm"] = s.grad_norm;
  line["bad_steps"] = s.bad_steps;
  line["tokens_per_s"] = s.tokens_per_s;
  line["tflops"] = s.flops_per_s / 1e12;
  // MFU: the model FLOPs counted above (forward and backward of the work
  // routed, attention included) per second over the device's bf16 peak.
  if (s.peak_tflops > 0) line["mfu"] = s.flops_per_s / 1e12 / s.peak_tflops;
  if (s.device_bytes_high_water > 0) {
    line["device_mem_gib"] = s.device_bytes_high_water / 1073741824.0;
    if (s.device_bytes_reserved > 0) line["device_reserved_gib"] = s.device_bytes_reserved / 1073741824.0;
    if (s.host_staging_bytes > 0) line["host_staging_gib"] = s.host_staging_bytes / 1073741824.0;
    line["host_waits_per_step"] = s.host_waits_per_step;
  }
  if (s.host_tensor_bytes_high_water > 0) line["tensor_mem_gib"] = s.host_tensor_bytes_high_water / 1073741824.0;
  line["elapsed_s"] = s.elapsed_s;
  if (s.world > 1) {
    line["ranks"] = s.world;
    line["comm_all_to_all_s"] = s.all_to_all_s;
    line["comm_all_to_all_bytes"] = s.all_to_all_bytes;
    line["comm_all_reduce_s"] = s.all_reduce_s;
    line["comm_all_reduce_exposed_s"] = s.all_reduce_exposed_s;
    if (s.sharded) line["comm_share_values_s"] = s.share_values_s;
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
  // (tokens the whole job's; FLOPs rank 0's own work, so a rank's on several)
  std::snprintf(b, sizeof b, " | lr %.2e | %.1fk tok/s | %.2f GFLOP/s%s | ETA %s", s.lr, s.tokens_per_s / 1e3,
                s.flops_per_s / 1e9, s.world > 1 ? " a rank" : "", format_duration(s.eta_s).c_str());
  out += b;
  if (s.peak_tflops > 0) {
    std::snprintf(b, sizeof b, " | MFU %.1f%%", 100 * s.flops_per_s / 1e12 / s.peak_tflops);
    out += b;
  }
  if (s.device_bytes_high_water > 0) {
    std::snprintf(b, sizeof b, " | mem %.1f GiB (pool %.1f) | waits/step %.1f", s.device_bytes_high_water / 1073741824.0,
                  s.device_bytes_reserved / 1073741824.0, s.host_waits_per_step);
    out += b;
  }
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

std::string run_summary(const Config& cfg, int64_t parameters, int64_t train_size, int64_t val_size,
                        const std::string& train_unit, const std::string& val_unit) {
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
  const auto& e = cfg.moe();
  const bool budgeted = e.budget_mode() != switchyard::MoeConfig::SOFT || e.budget_coef() > 0 ||
                        cfg.budget().target() > 0;
  if (e.num_experts() > 0 && (e.expert_hidden_size() > 1 || e.expert_cost_size() > 0 || budgeted)) {
    // Runs of equal values: "64x4, 512x4".
    auto runs = [](const auto& v) {
      std::string o;
      char t[64];
      for (size_t i = 0; i < v.size();) {
        size_t j = i;
        while (j < v.size() && v[j] == v[i]) ++j;
        std::snprintf(t, sizeof t, "%s%g%s", o.empty() ? "" : ", ", static_cast<double>(v[i]),
                      j - i > 1 ? ("x" + std::to_string(j - i)).c_str() : "");
        o += t;
        i = j;
      }
      return o;
    };
    const int64_t F = cfg.model().ffn_hidden();
    const char* mode[] = {"SOFT", "HARD", "HARD_CAUSAL"};
    out += "experts: hidden " + runs(expert_hidden_sizes(e, F)) + "; cost per token " + runs(expert_costs(e, F)) +
           " (the dense FFN = 1)";
    std::snprintf(b, sizeof b, "; budget %.4g per token, %s%s\n", effective_moe_budget(cfg),
                  mode[e.budget_mode()], e.budget_coef() > 0 ? ", with the budget loss" : "");
    out += b;
  }
  if (cfg.budget().target() > 0) {
    const PlannedCost p = planned_cost(cfg);
    std::snprintf(b, sizeof b,
                  "budget: target %.3g of the dense model = head %.3f + attention %.3f + dense FFNs %.3f + routers "
                  "%.3f + experts %.3f (moe.budget %.4g per MoE token)\n",
                  cfg.budget().target(), p.head / p.dense, p.attention / p.dense, p.ffn / p.dense,
                  p.routers / p.dense, cfg.budget().target() - p.fixed() / p.dense,
                  p.moe_budget(cfg.budget().target()));
    out += b;
  }
  std::string recomputed;  // train.recompute: which blocks
  if (const int n = recomputed_blocks(cfg); n > 0)
    recomputed = n == cfg.model().n_layers() ? " (recomputed in backward)"
                 : n == 1                        ? " (block 0 recomputed in backward)"
                                                 : " (blocks 0-" + std::to_string(n - 1) + " recomputed in backward)";
  std::snprintf(b, sizeof b, "model: %lld parameters, %d layers%s, d_model %d; data: %lld train ",
                static_cast<long long>(parameters), cfg.model().n_layers(), recomputed.c_str(), cfg.model().d_model(),
                static_cast<long long>(train_size));
  out += b;
  if (train_unit != "bytes" || val_unit != "bytes") out += train_unit + " ";
  std::snprintf(b, sizeof b, "/ %lld val ", static_cast<long long>(val_size));
  return out + b + val_unit + "\n";
}

}  // namespace sy
