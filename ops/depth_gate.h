// The depth router's gate (Mixture-of-Depths, Raposo et al. 2024; the layer
// is runtime/depth_router.h): combine weights from router scores, and the
// causal predictor's loss.
//
//   s_i = sigmoid(r_i)
//   w_i = s_i / sg(s_i)  (straight-through: 1 in value)  or  s_i,   kept i; 0 otherwise
// Backward: dr_i = dw_i (1 - s_i)  [straight-through: d(s/sg(s))/dr = s(1-s)/s]
//                  or dw_i s_i (1 - s_i),   plus dbudget_i s_i (1 - s_i)
//           (the budget loss is on s: ops/router_loss.h's budget_loss with G = 1).
// Predictor: p_i = sigmoid(l_i), y_i = 1 when the route kept i;
//   BCE = -mean_i (y_i log p_i + (1 - y_i) log(1 - p_i))  (p clamped to [1e-7, 1 - 1e-7]),
//   dl_i = (p_i - y_i) / N;  accuracy = mean_i [(p_i > tau) == y_i].
// Shapes: r, s, w, dr, dw, dbudget, p, dl (N); the route has k = 1.
// The predictor's BCE and accuracy are statistics for the metrics, not part
// of the training loss: predictor_loss writes them into a small f64 tensor
// where the data lives, so a training step on a GPU need not wait for them;
// they are read when (and if) they are reported (runtime/depth_router.h).
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"
#include "ops/routing.h"

namespace sy::ops {

void depth_gate_forward(Ctx& ctx, Tensor& w, const Tensor& s, const Route& r, bool straight_through);
// dr is overwritten.
void depth_gate_backward(Ctx& ctx, Tensor& dr, const Tensor& dw, const Tensor& dbudget, const Tensor& s,
                         const Route& r, bool straight_through);
// dl is overwritten; so is stats, f64 (2) on the route's device (a view of a
// larger tensor is fine): stats[0] = BCE, stats[1] = accuracy.
void predictor_loss(Ctx& ctx, Tensor& dl, Tensor& stats, const Tensor& p, const Route& r, float tau);

// The CPU reference (ops/cpu/depth_gate.cc) and the CUDA kernels (ops/cuda/depth_gate.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void depth_gate_forward(Ctx& ctx, Tensor& w, const Tensor& s, const Route& r, bool straight_through);
  void depth_gate_backward(Ctx& ctx, Tensor& dr, const Tensor& dw, const Tensor& dbudget, const Tensor& s,
                           const Route& r, bool straight_through);
  void predictor_loss(Ctx& ctx, Tensor& dl, Tensor& stats, const Tensor& p, const Route& r, float tau);
)

}  // namespace sy::ops
