// Losses that keep routing healthy (each optional; coefficient 0 disables).
//
// Load balance (Switch Transformer, Fedus et al. 2021, eq. 4):
//   L_lb = alpha * G * sum_g f_g P_g,  f_g = (assignments chosen for g) / (N k),
//   P_g = mean_i p_ig.  f is a count (no gradient): dL/dp_ig = alpha G f_g / N.
// Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5):
//   L_z = beta * mean_i (logsumexp_g l_ig)^2,  dL/dl_ig = 2 beta lse_i softmax(l_i)_g / N.
// Compute budget (seed 002): C = sum_i sum_g p_ig c_g / N,
//   L_b = lambda * max(0, C - B),  dL/dp_ig = lambda c_g / N when C > B, else 0.
//
// Each returns the loss value and accumulates its gradient (times `scale`,
// the upstream gradient, normally 1) into dprobs or dlogits (N, G).
#pragma once
#include <cstdint>
#include <vector>

#include "ops/routing.h"

namespace sy::ops {

float load_balance_loss(std::vector<float>& dprobs, const std::vector<float>& probs,
                        const Route& r, float alpha);
// The same from given statistics: f (G) and P (G) may cover more tokens than
// these N (every data-parallel rank's, all-reduced), which makes the loss
// independent of how the batch is split. The gradient alpha G f_g / N uses
// this rank's N: with the data-parallel average over ranks of equal N it is
// the gradient of the global loss.
float load_balance_loss(std::vector<float>& dprobs, int64_t N, int64_t G, const std::vector<double>& f,
                        const std::vector<double>& P, float alpha);
// Grouped (GShard groups; DeepSeek-V3's sequence-wise loss when group is the
// sequence length): items split into runs of `group` consecutive items, S = N /
// group of them, each with its own f_sg and P_sg;
//   L = alpha * G * (1/S) sum_s sum_g f_sg P_sg,  dL/dp_ig = alpha G f_sg / N
// for i in run s. group = N is the ungrouped loss. N % group == 0.
float load_balance_loss_grouped(std::vector<float>& dprobs, const std::vector<float>& probs,
                                const Route& r, int64_t group, float alpha);
// Raw sums for those statistics over items [i0, i1) (i1 < 0: to the end): per
// group, assignments chosen and summed probability; then used assignments and
// items. Layout (2G + 2).
std::vector<double> load_balance_sums(const std::vector<float>& probs, const Route& r,
                                      int64_t i0 = 0, int64_t i1 = -1);
// f_g (share of used assignments) and P_g (mean probability) from those sums.
void load_balance_fractions(const std::vector<double>& sums, int64_t G, std::vector<double>& f,
                            std::vector<double>& P);
float z_loss(std::vector<float>& dlogits, const float* logits, int64_t N, int64_t G, float beta);
// cost (G) or empty for all ones; also returns the expected cost C in *expected.
float budget_loss(std::vector<float>& dprobs, const std::vector<float>& probs, int64_t N,
                  int64_t G, const std::vector<float>& cost, float budget, float lambda,
                  float* expected = nullptr);

}  // namespace sy::ops
