#include "ops/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace sy::ops {

namespace {
float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
}  // namespace

void sparse_attention_forward(float* o, int64_t ld_o, float* lse, const HeadQKV& h, const KeySets& ks) {
  SY_CHECK(ks.queries() == h.T, "key sets for " << ks.queries() << " queries, head has " << h.T);
  const float scale = 1.f / std::sqrt(static_cast<float>(h.D));
  std::vector<float> s;
  for (int64_t t = 0; t < h.T; ++t) {
    float* ot = o + t * ld_o;
    std::fill(ot, ot + h.D, 0.f);
    const int64_t n = ks.off[t + 1] - ks.off[t];
    const int32_t* keys = ks.idx.data() + ks.off[t];
    if (n == 0) {
      lse[t] = -INFINITY;
      continue;
    }
    s.resize(n);
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      s[j] = dot(h.q + t * h.ld, h.k + keys[j] * h.ld, h.D) * scale;
      mx = std::max(mx, s[j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
    for (int64_t j = 0; j < n; ++j) {
      const float a = s[j] / sum;
      const float* v = h.v + keys[j] * h.ld;
      for (int64_t d = 0; d < h.D; ++d) ot[d] += a * v[d];
    }
    lse[t] = mx + std::log(sum);
  }
}

void sparse_attention_backward(const HeadGrads& g, const float* dout, const float* o, int64_t ld_o,
                               const float* lse, const HeadQKV& h, const KeySets& ks) {
  const float scale = 1.f / std::sqrt(static_cast<float>(h.D));
  for (int64_t t = 0; t < h.T; ++t) {
    const int64_t n = ks.off[t + 1] - ks.off[t];
    if (n == 0) continue;
    const int32_t* keys = ks.idx.data() + ks.off[t];
    const float* dot_ = dout + t * ld_o;
    const float delta = dot(dot_, o + t * ld_o, h.D);
    const float* q = h.q + t * h.ld;
    float* dq = g.dq + t * g.ld;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t u = keys[j];
      const float a = std::exp(dot(q, h.k + u * h.ld, h.D) * scale - lse[t]);
      const float* v = h.v + u * h.ld;
      float* dv = g.dv + u * g.ld;
      for (int64_t d = 0; d < h.D; ++d) dv[d] += a * dot_[d];
      const float ds = a * (dot(dot_, v, h.D) - delta) * scale;
      const float* k = h.k + u * h.ld;
      float* dk = g.dk + u * g.ld;
      for (int64_t d = 0; d < h.D; ++d) {
        dq[d] += ds * k[d];
        dk[d] += ds * q[d];
      }
    }
  }
}

KeySets local_keysets(int64_t T, int64_t window) {
  SY_CHECK(window >= 1, "local attention window " << window);
  KeySets ks;
  std::vector<int32_t> keys;
  for (int64_t t = 0; t < T; ++t) {
    keys.clear();
    for (int64_t u = std::max<int64_t>(0, t - window + 1); u <= t; ++u) keys.push_back(static_cast<int32_t>(u));
    ks.add_query(keys);
  }
  return ks;
}

KeySets block_topk_keysets(const HeadQKV& h, int64_t block, int64_t topk) {
  SY_CHECK(block >= 1 && topk >= 0, "block top-k: block " << block << ", k " << topk);
  const int64_t nb = (h.T + block - 1) / block;
  // mean(K_block) per block
  std::vector<float> kmean(nb * h.D, 0.f);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t u0 = b * block, u1 = std::min(h.T, u0 + block);
    for (int64_t u = u0; u < u1; ++u)
      for (int64_t d = 0; d < h.D; ++d) kmean[b * h.D + d] += h.k[u * h.ld + d];
    for (int64_t d = 0; d < h.D; ++d) kmean[b * h.D + d] /= static_cast<float>(u1 - u0);
  }
  KeySets ks;
  std::vector<int32_t> keys;
  std::vector<float> score;
  std::vector<int64_t> order;
  for (int64_t t = 0; t < h.T; ++t) {
    const int64_t own = t / block;
    score.resize(own);
    for (int64_t b = 0; b < own; ++b) score[b] = dot(h.q + t * h.ld, kmean.data() + b * h.D, h.D);
    order.resize(own);
    std::iota(order.begin(), order.end(), 0);
    const int64_t keep = std::min(topk, own);
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), [&](int64_t a, int64_t b) {
      return score[a] > score[b] || (score[a] == score[b] && a < b);
    });
    std::sort(order.begin(), order.begin() + keep);  // keys in position order
    keys.clear();
    for (int64_t i = 0; i < keep; ++i)
      for (int64_t u = order[i] * block; u < (order[i] + 1) * block; ++u) keys.push_back(static_cast<int32_t>(u));
    for (int64_t u = own * block; u <= t; ++u) keys.push_back(static_cast<int32_t>(u));
    ks.add_query(keys);
  }
  return ks;
}

}  // namespace sy::ops
