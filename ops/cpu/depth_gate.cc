#include "ops/depth_gate.h"

#include <algorithm>
#include <cmath>

namespace sy::ops::cpu {

void depth_gate_forward(Ctx&, Tensor& w_t, const Tensor& s_t, const Route& r, bool straight_through) {
  const int32_t* group = r.group.data<int32_t>();
  const float* s = s_t.f32();
  float* w = w_t.f32();
  // Straight-through: s / sg(s) is 1 in value. Written as 1 rather than
  // s / s, which is 1 for every s but 0: a router score below about -88
  // makes sigmoid 0 in fp32, and 0 / 0 made the block's output NaN.
  for (int64_t i = 0; i < r.num_items; ++i)
    w[i] = group[i] < 0 ? 0.f : straight_through ? 1.f : s[i];
}

void depth_gate_backward(Ctx&, Tensor& dr_t, const Tensor& dw_t, const Tensor& dbudget_t, const Tensor& s_t,
                         const Route& r, bool straight_through) {
  const float* s = s_t.f32();
  const float* dw = dw_t.f32();
  const float* dbudget = dbudget_t.f32();
  float* dr = dr_t.f32();
  for (int64_t i = 0; i < r.num_items; ++i) {
    dr[i] = dbudget[i] * s[i] * (1.f - s[i]);
    if (r.row(i) >= 0) dr[i] += dw[i] * (straight_through ? 1.f - s[i] : s[i] * (1.f - s[i]));
  }
}

void predictor_loss(Ctx&, Tensor& dl_t, Tensor& stats, const Tensor& p_t, const Route& r, float tau) {
  const int64_t N = r.num_items;
  const int32_t* group = r.group.data<int32_t>();
  const float* pred = p_t.f32();
  float* dl = dl_t.f32();
  double bce = 0;
  int64_t agree = 0;
  for (int64_t i = 0; i < N; ++i) {
    const bool chosen = group[i] >= 0;
    const double p = std::min(std::max<double>(pred[i], 1e-7), 1 - 1e-7);
    bce -= chosen ? std::log(p) : std::log(1 - p);
    agree += (pred[i] > tau) == chosen;
    dl[i] = (pred[i] - (chosen ? 1.f : 0.f)) / N;
  }
  double* st = stats.data<double>();
  st[0] = bce / std::max<int64_t>(1, N);
  st[1] = static_cast<double>(agree) / std::max<int64_t>(1, N);
}

}  // namespace sy::ops::cpu
