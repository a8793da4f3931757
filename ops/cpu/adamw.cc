#include "ops/adamw.h"

#include <cmath>

namespace sy::ops::cpu {

void adamw_update(Ctx&, const std::vector<AdamWParam>& params, const AdamWConfig& c, int64_t step) {
  const float bc1 = 1.f - std::pow(c.beta1, static_cast<float>(step));
  const float bc2 = 1.f - std::pow(c.beta2, static_cast<float>(step));
  for (const AdamWParam& p : params) {
    const float wd = p.decay ? c.weight_decay : 0.f;
    float* w = p.value->f32();
    const float* g = p.grad->f32();
    float* mp = p.m->f32();
    float* vp = p.v->f32();
    for (int64_t i = 0; i < p.value->numel(); ++i) {
      mp[i] = c.beta1 * mp[i] + (1.f - c.beta1) * g[i];
      vp[i] = c.beta2 * vp[i] + (1.f - c.beta2) * g[i] * g[i];
      const float mhat = mp[i] / bc1, vhat = vp[i] / bc2;
      w[i] -= c.lr * (mhat / (std::sqrt(vhat) + c.eps) + wd * w[i]);
    }
  }
}

double grad_sq_sum(Ctx&, const std::vector<const Tensor*>& grads) {
  double sq = 0;
  for (const Tensor* g : grads) {
    const float* p = g->f32();
    for (int64_t i = 0; i < g->numel(); ++i) sq += static_cast<double>(p[i]) * p[i];
  }
  return sq;
}

void clip_to_norm(Ctx&, const std::vector<Tensor*>& grads, float norm, float max_norm) {
  if (max_norm <= 0 || norm <= max_norm) return;
  const float k = max_norm / norm;
  for (Tensor* g : grads) {
    float* p = g->f32();
    for (int64_t i = 0; i < g->numel(); ++i) p[i] *= k;
  }
}

}  // namespace sy::ops::cpu
