// The compute a config plans to spend per token (forward FLOPs, multiply-add
// = 2), from the config alone, part by part: what budget.target is split by.
// Measured costs come from the model's last forward instead
// (Transformer::compute_parts); the plan assumes routed attention's clusters
// balanced, depth routing at its training capacity and every MoE layer
// spending exactly its budget.
//
//   unit  = ffn(ffn_hidden)                 the dense FFN per token (c_g's unit), where
//     ffn(H) = 4 d H (fc1 and fc2, d H multiply-adds each), 6 d H with SwiGLU (its gate)
//   proj  = 8 d^2, or 4 d^2 + 4 d kv with grouped key/value heads of width kv
//   dense = 2 d_model V + sum_l (proj + 2 T d + unit)    the model run dense
//   per layer l, for the fraction f_l of tokens its block processes
//   (ceil(capacity T) / T on depth-routed blocks, else 1):
//     attention  f_l (proj + 4 pairs(n) d / n)   n = f_l T tokens attended among
//     ffn        f_l unit (dense FFN) or f_l ffn(H_shared) (MoE's shared expert)
//     routers    f_l 2 d G (MoE gate) + 4 d (depth router and predictor)
//     experts    f_l B unit (a MoE layer at budget B)
// so the total is fixed + B unit sum_{MoE l} f_l, and budget.target t gives
//   B = (t dense - fixed) / (unit sum_{MoE l} f_l).
#pragma once
#include "runtime/config.h"

namespace sy {

// Forward FLOPs per token of an FFN of hidden width `hidden` (2 a
// multiply-add): 4 d_model hidden for fc1 and fc2, 6 d_model hidden with
// model.activation SWIGLU (the gate, a third matrix of the same size), as
// the layers count what they run (runtime/layers.cc, grouped_experts.cc).
double ffn_flops_per_token(const switchyard::ModelConfig& m, double hidden);

struct PlannedCost {
  double unit = 0, dense = 0;                           // FLOPs per token
  double head = 0, attention = 0, ffn = 0, routers = 0;  // FLOPs per token, outside the experts
  double moe_tokens = 0;                                 // sum over MoE layers of f_l
  double fixed() const { return head + attention + ffn + routers; }
  // The MoE budget B (dense-FFN units) that makes the plan spend target * dense.
  double moe_budget(double target) const;
};

PlannedCost planned_cost(const Config& cfg);

// moe.budget, or the one budget.target gives when it is set.
double effective_moe_budget(const Config& cfg);

}  // namespace sy
