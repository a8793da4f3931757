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

void to_bf16(Ctx&, Tensor& y, const Tensor& x) {
  bf16_t* p = y.data<bf16_t>();
  const float* q = x.f32();
  for (int64_t i = 0; i < y.numel(); ++i) p[i].bits = f32_to_bf16(q[i]);
}

void to_f32(Ctx&, Tensor& y, const Tensor& x) {
  float* p = y.f32();
  const bf16_t* q = x.data<bf16_t>();
  for (int64_t i = 0; i < y.numel(); ++i) p[i] = bf16_to_f32(q[i].bits);
}

}  // namespace sy::ops::cpu
