#include "ops/rope.h"

#include <cmath>
#include <vector>

namespace sy::ops::cpu {

namespace {
// Rotates every row by +angle (sign 1) or -angle (sign -1).
void rotate(const RopeArgs& a, float sign) {
  const int64_t N = a.x.dim(0), W = a.x.dim(1), D = a.head_dim, half = D / 2;
  const int32_t* pos = a.positions.defined() ? a.positions.data<int32_t>() : nullptr;
  std::vector<double> theta(half);
  for (int64_t i = 0; i < half; ++i) theta[i] = std::pow(a.base, -2.0 * i / D);
  std::vector<float> cs(half), sn(half);
  float* x = a.x.f32();
  for (int64_t n = 0; n < N; ++n) {
    const double p = pos ? pos[n] : n % a.seq_len;
    for (int64_t i = 0; i < half; ++i) {
      cs[i] = static_cast<float>(std::cos(p * theta[i]));
      sn[i] = sign * static_cast<float>(std::sin(p * theta[i]));
    }
    for (int64_t h = 0; h < a.heads; ++h) {
      float* r = x + n * W + h * D;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = r[i], x2 = r[i + half];
        r[i] = x1 * cs[i] - x2 * sn[i];
        r[i + half] = x2 * cs[i] + x1 * sn[i];
      }
    }
  }
}
}  // namespace

void rope_forward(Ctx&, const RopeArgs& a) { rotate(a, 1.f); }

void rope_backward(Ctx&, const RopeBackwardArgs& a) { rotate(a, -1.f); }

}  // namespace sy::ops::cpu
