#include "ops/adamw.h"

#include <cmath>

#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

namespace {

// Element-wise, so both clones give the old loop's bits exactly.
SY_VECTOR_CLONES void adamw_kernel(float* w, const float* gp, float* mp, float* vp, int64_t n, AdamWConfig c,
                                   float wd, float bc1, float bc2) {
  const float lr = c.lr, b1 = c.beta1, b2 = c.beta2, eps = c.eps, k = c.grad_scale;
  for (int64_t i = 0; i < n; ++i) {
    const float g = gp[i] * k;  // (k = 1: g itself)
    mp[i] = b1 * mp[i] + (1.f - b1) * g;
    vp[i] = b2 * vp[i] + (1.f - b2) * g * g;
    const float mhat = mp[i] / bc1, vhat = vp[i] / bc2;
    w[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * w[i]);
  }
}

// sum g^2 in eight double lanes (a reduction order the compiler may vectorise).
SY_VECTOR_CLONES double sq_sum(const float* p, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(p[i + j]) * p[i + j];
  for (; i < n; ++i) acc[i & 7] += static_cast<double>(p[i]) * p[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

}  // namespace

void adamw_update(Ctx&, const std::vector<AdamWParam>& params, const AdamWConfig& c, int64_t step) {
  const float bc1 = 1.f - std::pow(c.beta1, static_cast<float>(step));
  const float bc2 = 1.f - std::pow(c.beta2, static_cast<float>(step));
  for (const AdamWParam& p : params) {
    const int64_t n = p.value->numel();
    float* w = p.value->f32();
    adamw_kernel(w, p.grad->f32(), p.m->f32(), p.v->f32(), n, c, p.decay ? c.weight_decay : 0.f, bc1, bc2);
    if (!p.shadow) continue;
    bf16_t* s = p.shadow->data<bf16_t>();  // right after the update, while w is in cache
    for (int64_t i = 0; i < n; ++i) s[i].bits = f32_to_bf16(w[i]);
  }
}

double grad_sq_sum(Ctx&, const std::vector<const Tensor*>& grads) {
  double sq = 0;
  for (const Tensor* g : grads) sq += sq_sum(g->f32(), g->numel());
  return sq;
}

void clip_to_norm(Ctx&, const std::vector<Tensor*>& grads, float norm, float max_norm) {
  const float k = clip_scale(norm, max_norm);
  if (k == 1.f) return;
  for (Tensor* g : grads) {
    float* p = g->f32();
    for (int64_t i = 0; i < g->numel(); ++i) p[i] *= k;
  }
}

}  // namespace sy::ops::cpu
