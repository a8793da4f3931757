#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace sy::ops::cpu {

void attention_forward(Ctx&, const AttentionArgs& args) {
  const AttentionShape& s = args.shape;
  Tensor& out = args.out;
  const Tensor& qkv = args.qkv;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = qkv.f32();
  float* o = out.f32();
  std::vector<float> att(T);  // one row of probabilities; only lse is saved
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const float* q = in + (b * T + t) * C3 + h * D;
        float* arow = att.data();
        float mx = -INFINITY;
        for (int64_t u = 0; u <= t; ++u) {
          const float* k = in + (b * T + u) * C3 + C + h * D;
          float d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[i] * k[i];
          arow[u] = d * scale;
          mx = std::max(mx, arow[u]);
        }
        float sum = 0;
        for (int64_t u = 0; u <= t; ++u) sum += (arow[u] = std::exp(arow[u] - mx));
        for (int64_t u = 0; u <= t; ++u) arow[u] /= sum;
        args.lse.f32()[(b * s.H + h) * T + t] = mx + std::log(sum);
        float* orow = o + (b * T + t) * C + h * D;
        std::fill(orow, orow + D, 0.f);
        for (int64_t u = 0; u <= t; ++u) {
          const float* v = in + (b * T + u) * C3 + 2 * C + h * D;
          for (int64_t i = 0; i < D; ++i) orow[i] += arow[u] * v[i];
        }
      }
}

void attention_backward(Ctx&, const AttentionBackwardArgs& args) {
  const AttentionShape& s = args.shape;
  Tensor& dqkv = args.dqkv;
  const Tensor& dout = args.dout;
  const Tensor& qkv = args.qkv;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = qkv.f32();
  float* din = dqkv.f32();
  std::vector<float> da(T), att(T);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        // The row of probabilities, recomputed from q, k and lse: s[t, u]
        // exactly as the forward computed it, a = exp(s - lse). Delta (dot
        // below) stays sum_u a da, equal to dout . out: it keeps the 50-step
        // loss baselines within 1e-6 (tiny 8e-7), dout . out does not (tiny
        // step 23 moves by more).
        const float* q = in + (b * T + t) * C3 + h * D;
        const float lse = args.lse.f32()[(b * s.H + h) * T + t];
        float* arow = att.data();
        for (int64_t u = 0; u <= t; ++u) {
          const float* k = in + (b * T + u) * C3 + C + h * D;
          float d = 0;
          for (int64_t i = 0; i < D; ++i) d += q[i] * k[i];
          arow[u] = std::exp(d * scale - lse);
        }
        const float* dorow = dout.f32() + (b * T + t) * C + h * D;
        float dot = 0;
        for (int64_t u = 0; u <= t; ++u) {
          const float* v = in + (b * T + u) * C3 + 2 * C + h * D;
          float* dv = din + (b * T + u) * C3 + 2 * C + h * D;
          float d = 0;
          for (int64_t i = 0; i < D; ++i) {
            d += dorow[i] * v[i];
            dv[i] += arow[u] * dorow[i];
          }
          da[u] = d;
          dot += arow[u] * d;
        }
        float* dq = din + (b * T + t) * C3 + h * D;
        for (int64_t u = 0; u <= t; ++u) {
          float ds = arow[u] * (da[u] - dot) * scale;
          const float* k = in + (b * T + u) * C3 + C + h * D;
          float* dk = din + (b * T + u) * C3 + C + h * D;
          for (int64_t i = 0; i < D; ++i) {
            dq[i] += ds * k[i];
            dk[i] += ds * q[i];
          }
        }
      }
}

}  // namespace sy::ops::cpu
