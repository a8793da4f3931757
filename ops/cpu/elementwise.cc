#include "ops/elementwise.h"

#include <cmath>

namespace sy::ops::cpu {

void add_into(Ctx&, Tensor& y, const Tensor& x) {
  float* p = y.f32();
  const float* q = x.f32();
  for (int64_t i = 0; i < y.numel(); ++i) p[i] += q[i];
}

void mul_into(Ctx&, Tensor& y, const Tensor& x) {
  float* p = y.f32();
  const float* q = x.f32();
  for (int64_t i = 0; i < y.numel(); ++i) p[i] *= q[i];
}

void sigmoid(Ctx&, Tensor& y, const Tensor& x) {
  float* p = y.f32();
  const float* q = x.f32();
  for (int64_t i = 0; i < y.numel(); ++i) p[i] = 1.f / (1.f + std::exp(-q[i]));
}

void scale(Ctx&, Tensor& y, float s) {
  float* p = y.f32();
  for (int64_t i = 0; i < y.numel(); ++i) p[i] *= s;
}

}  // namespace sy::ops::cpu
