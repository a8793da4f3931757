#include "ops/adamw.h"

#include <cmath>

namespace sy::ops {

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWConfig& c,
                  int64_t step, bool decay) {
  check_shape(grad, param.shape(), "adamw grad");
  check_shape(m, param.shape(), "adamw m");
  check_shape(v, param.shape(), "adamw v");
  const float bc1 = 1.f - std::pow(c.beta1, static_cast<float>(step));
  const float bc2 = 1.f - std::pow(c.beta2, static_cast<float>(step));
  const float wd = decay ? c.weight_decay : 0.f;
  float* w = param.f32();
  const float* g = grad.f32();
  float* mp = m.f32();
  float* vp = v.f32();
  for (int64_t i = 0; i < param.numel(); ++i) {
    mp[i] = c.beta1 * mp[i] + (1.f - c.beta1) * g[i];
    vp[i] = c.beta2 * vp[i] + (1.f - c.beta2) * g[i] * g[i];
    const float mhat = mp[i] / bc1, vhat = vp[i] / bc2;
    w[i] -= c.lr * (mhat / (std::sqrt(vhat) + c.eps) + wd * w[i]);
  }
}

double grad_sq_sum(const std::vector<Tensor*>& grads) {
  double sq = 0;
  for (const Tensor* g : grads) {
    const float* p = g->f32();
    for (int64_t i = 0; i < g->numel(); ++i) sq += static_cast<double>(p[i]) * p[i];
  }
  return sq;
}

void clip_to_norm(const std::vector<Tensor*>& grads, float norm, float max_norm) {
  if (max_norm <= 0 || norm <= max_norm) return;
  const float k = max_norm / norm;
  for (Tensor* g : grads) {
    float* p = g->f32();
    for (int64_t i = 0; i < g->numel(); ++i) p[i] *= k;
  }
}

float clip_grad_norm(const std::vector<Tensor*>& grads, float max_norm) {
  const float norm = static_cast<float>(std::sqrt(grad_sq_sum(grads)));
  clip_to_norm(grads, norm, max_norm);
  return norm;
}

}  // namespace sy::ops
