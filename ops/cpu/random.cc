#include "ops/random.h"

#include <cmath>

namespace sy::ops::cpu {

namespace {
constexpr float kTwoPi = 6.28318530717958647692f;
}  // namespace

void random_uniform(Ctx&, Tensor& out, const RandomKey& key, float lo, float hi) {
  float* p = out.f32();
  for (int64_t i = 0; i < out.numel(); ++i) p[i] = lo + (hi - lo) * bits_to_uniform(random_bits(key, i).v[0]);
}

void random_normal(Ctx&, Tensor& out, const RandomKey& key, float std) {
  float* p = out.f32();
  for (int64_t i = 0; i < out.numel(); ++i) {
    const Philox4 w = random_bits(key, i);
    const float u = bits_to_uniform(w.v[0]), v = bits_to_uniform(w.v[1]);
    p[i] = std * (std::sqrt(-2.f * std::log(u)) * std::cos(kTwoPi * v));
  }
}

void random_gumbel(Ctx&, Tensor& out, const RandomKey& key, float scale) {
  float* p = out.f32();
  for (int64_t i = 0; i < out.numel(); ++i) p[i] = -scale * std::log(-std::log(bits_to_uniform(random_bits(key, i).v[0])));
}

}  // namespace sy::ops::cpu
