#include "runtime/cost_model.h"

#include <cmath>

#include "ops/routing.h"
#include "runtime/moe_layer.h"
#include "runtime/sparse_self_attention.h"

namespace sy {

double ffn_flops_per_token(const switchyard::ModelConfig& m, double hidden) {
  const double matrices = m.activation() == switchyard::ModelConfig::SWIGLU ? 3 : 2;
  return 2.0 * matrices * m.d_model() * hidden;
}

double PlannedCost::moe_budget(double target) const {
  if (moe_tokens <= 0 || unit <= 0) return 0;
  return (target * dense - fixed()) / (unit * moe_tokens);
}

PlannedCost planned_cost(const Config& cfg) {
  const auto& m = cfg.model();
  const auto& e = cfg.moe();
  const auto& at = cfg.attention();
  const auto& dp = cfg.depth();
  const double d = m.d_model(), T = m.seq_len(), V = m.vocab_size();
  const int L = m.n_layers();
  // The projections: q and the output d^2 each, k and v d * kv (grouped-query
  // attention's kv = n_kv_heads * head size; d without grouping), 2 FLOPs a
  // multiply-add: 8 d^2 for multi-head attention.
  const double kv = d / m.n_heads() * kv_heads(m);
  const double proj = 4.0 * d * d + 4.0 * d * kv;
  PlannedCost p;
  p.unit = ffn_flops_per_token(m, m.ffn_hidden());
  p.head = 2.0 * d * V;
  p.dense = p.head;
  for (int l = 0; l < L; ++l) {
    p.dense += proj + 2.0 * T * d + p.unit;
    const bool depth_routed = is_depth_routed(dp, l);
    const double n = depth_routed ? static_cast<double>(ops::ceil_capacity(dp.capacity(), T)) : T;
    const double f = n / T;
    const bool sparse = is_sparse_attention_layer(at, l, L);
    // (the layer's clusters were made for T, whatever n its block keeps)
    const double attn = sparse ? proj + 4.0 * attention_pairs(at, static_cast<int64_t>(n), m.n_heads(),
                                                              cluster_count(at, T)).sparse * d / n
                               : proj + 2.0 * n * d;
    p.attention += f * attn;
    if (depth_routed) p.routers += 4.0 * d;
    const bool moe = is_moe_layer(e, l);
    if (!moe) {
      p.ffn += f * p.unit;
      continue;
    }
    p.routers += f * 2.0 * d * e.num_experts();
    if (e.shared_expert()) p.ffn += f * ffn_flops_per_token(m, shared_expert_hidden(e, m.ffn_hidden()));
    p.moe_tokens += f;
  }
  return p;
}

double effective_moe_budget(const Config& cfg) {
  if (cfg.budget().target() <= 0) return cfg.moe().budget();
  return planned_cost(cfg).moe_budget(cfg.budget().target());
}

}  // namespace sy
