#include "ops/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sy::ops::cpu {

void decode_attention(Ctx&, const DecodeAttentionArgs& a) {
  const int64_t H = a.heads, G = a.kv_heads, D = a.q.numel() / H, r = H / G, n = a.n;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* q = a.q.f32();
  const float* k = a.k.f32();
  const float* v = a.v.f32();
  float* o = a.o.f32();
  std::vector<float> s(n);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / r;
    const float* qh = q + h * D;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      const float* kj = k + j * G * D + g * D;
      float dot = 0.f;
      for (int64_t d = 0; d < D; ++d) dot += qh[d] * kj[d];
      s[j] = dot * scale;
      m = std::max(m, s[j]);
    }
    double l = 0;
    for (int64_t j = 0; j < n; ++j) l += s[j] = std::exp(s[j] - m);
    float* oh = o + h * D;
    std::fill(oh, oh + D, 0.f);
    for (int64_t j = 0; j < n; ++j) {
      const float p = static_cast<float>(s[j] / l);
      const float* vj = v + j * G * D + g * D;
      for (int64_t d = 0; d < D; ++d) oh[d] += p * vj[d];
    }
  }
}

}  // namespace sy::ops::cpu
