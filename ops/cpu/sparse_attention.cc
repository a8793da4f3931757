#include "ops/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.h"
#include "ops/elementwise.h"

namespace sy::ops::cpu {

namespace {
float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// One head of one sequence: q, k, v (T, D), contiguous.
struct Head {
  const float *q, *k, *v;
  int64_t T, D;
};
Head head(const Tensor& q, const Tensor& k, const Tensor& v) {
  return {q.f32(), k.f32(), v.f32(), q.dim(0), q.dim(1)};
}
}  // namespace

// bf16 tensors (CUDA's tensor-core path for block top-k): the f32 path on
// their values, results rounded to bf16 (gradients accumulate as
// bf16(g + gradient)), as ops/cpu/routed_attention.cc does; the GPU also
// rounds P and dS, so the two agree to class B.
void sparse_attention_forward(Ctx& ctx, const SparseAttentionArgs& args) {
  if (args.q.dtype() == DType::bf16) {
    const Tensor q = args.q.to(DType::f32), k = args.k.to(DType::f32), v = args.v.to(DType::f32);
    Tensor o = Tensor::empty(args.o.shape(), DType::f32, ctx);
    sparse_attention_forward(ctx, {o, args.lse, q, k, v, args.keys});
    to_bf16(ctx, args.o, o);
    return;
  }
  const Head h = head(args.q, args.k, args.v);
  const int64_t* off = args.keys.off.data<int64_t>();
  const int32_t* idx = args.keys.idx.data<int32_t>();
  float* o = args.o.f32();
  float* lse = args.lse.f32();
  const float scale = 1.f / std::sqrt(static_cast<float>(h.D));
  std::vector<float> s;
  for (int64_t t = 0; t < h.T; ++t) {
    float* ot = o + t * h.D;
    std::fill(ot, ot + h.D, 0.f);
    const int64_t n = off[t + 1] - off[t];
    const int32_t* keys = idx + off[t];
    if (n == 0) {
      lse[t] = -INFINITY;
      continue;
    }
    s.resize(n);
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      s[j] = dot(h.q + t * h.D, h.k + keys[j] * h.D, h.D) * scale;
      mx = std::max(mx, s[j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
    for (int64_t j = 0; j < n; ++j) {
      const float a = s[j] / sum;
      const float* v = h.v + keys[j] * h.D;
      for (int64_t d = 0; d < h.D; ++d) ot[d] += a * v[d];
    }
    lse[t] = mx + std::log(sum);
  }
}

void sparse_attention_backward(Ctx& ctx, const SparseAttentionBackwardArgs& args) {
  if (args.q.dtype() == DType::bf16) {
    auto f32 = [](const Tensor& t) { return t.to(DType::f32); };
    Tensor dq = f32(args.dq), dk = f32(args.dk), dv = f32(args.dv);
    sparse_attention_backward(ctx, {dq, dk, dv, f32(args.dout), f32(args.o), args.lse, f32(args.q), f32(args.k),
                                    f32(args.v), args.keys});
    to_bf16(ctx, args.dq, dq);
    to_bf16(ctx, args.dk, dk);
    to_bf16(ctx, args.dv, dv);
    return;
  }
  const Head h = head(args.q, args.k, args.v);
  const int64_t* off = args.keys.off.data<int64_t>();
  const int32_t* idx = args.keys.idx.data<int32_t>();
  const float* dout = args.dout.f32();
  const float* o = args.o.f32();
  const float* lse = args.lse.f32();
  float* gdq = args.dq.f32();
  float* gdk = args.dk.f32();
  float* gdv = args.dv.f32();
  const float scale = 1.f / std::sqrt(static_cast<float>(h.D));
  for (int64_t t = 0; t < h.T; ++t) {
    const int64_t n = off[t + 1] - off[t];
    if (n == 0) continue;
    const int32_t* keys = idx + off[t];
    const float* dot_ = dout + t * h.D;
    const float delta = dot(dot_, o + t * h.D, h.D);
    const float* q = h.q + t * h.D;
    float* dq = gdq + t * h.D;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t u = keys[j];
      const float a = std::exp(dot(q, h.k + u * h.D, h.D) * scale - lse[t]);
      const float* v = h.v + u * h.D;
      float* dv = gdv + u * h.D;
      for (int64_t d = 0; d < h.D; ++d) dv[d] += a * dot_[d];
      const float ds = a * (dot(dot_, v, h.D) - delta) * scale;
      const float* k = h.k + u * h.D;
      float* dk = gdk + u * h.D;
      for (int64_t d = 0; d < h.D; ++d) {
        dq[d] += ds * k[d];
        dk[d] += ds * q[d];
      }
    }
  }
}

KeySets local_keysets(Ctx& ctx, int64_t T, int64_t window) {
  KeySetsBuilder ks;
  std::vector<int32_t> keys;
  for (int64_t t = 0; t < T; ++t) {
    keys.clear();
    for (int64_t u = std::max<int64_t>(0, t - window + 1); u <= t; ++u) keys.push_back(static_cast<int32_t>(u));
    ks.add_query(keys);
  }
  return ks.build(ctx);
}

KeySets block_topk_keysets(Ctx& ctx, const Tensor& q, const Tensor& k, int64_t block, int64_t topk) {
  if (q.dtype() == DType::bf16 || k.dtype() == DType::bf16)  // chosen on the values, widened (exact)
    return block_topk_keysets(ctx, q.to(DType::f32), k.to(DType::f32), block, topk);
  const Head h = head(q, k, k);
  const int64_t nb = (h.T + block - 1) / block;
  // mean(K_block) per block (the last one's never scored where it is partial)
  std::vector<float> kmean(nb * h.D);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t u0 = b * block, u1 = std::min(h.T, u0 + block);
    ops::block_key_mean(kmean.data() + b * h.D, h.k + u0 * h.D, u1 - u0, h.D, h.D);
  }
  KeySetsBuilder ks;
  std::vector<int32_t> keys;
  ops::BlockTopkScratch scratch;
  for (int64_t t = 0; t < h.T; ++t) {
    ops::block_topk_query_keys(keys, h.q + t * h.D, kmean.data(), t, h.D, block, topk, &scratch);
    ks.add_query(keys);
  }
  return ks.build(ctx);
}

}  // namespace sy::ops::cpu

namespace sy::ops {

void block_key_mean(float* mean, const float* k, int64_t n, int64_t stride, int64_t D) {
  std::fill(mean, mean + D, 0.f);
  for (int64_t u = 0; u < n; ++u)
    for (int64_t d = 0; d < D; ++d) mean[d] += k[u * stride + d];
  for (int64_t d = 0; d < D; ++d) mean[d] /= static_cast<float>(n);
}

void block_topk_query_keys(std::vector<int32_t>& keys, const float* q, const float* means, int64_t t, int64_t D,
                           int64_t block, int64_t topk, BlockTopkScratch* scratch) {
  const int64_t own = t / block;
  BlockTopkScratch mine;
  BlockTopkScratch& use = scratch ? *scratch : mine;
  std::vector<float>& score = use.score;
  std::vector<int64_t>& order = use.order;
  // A NaN score ranks last, as -inf: a strict weak order for partial_sort,
  // and keep blocks whatever the values (the CUDA rows' rule too).
  score.resize(own);
  for (int64_t b = 0; b < own; ++b) {
    const float s = cpu::dot(q, means + b * D, D);
    score[b] = std::isnan(s) ? -std::numeric_limits<float>::infinity() : s;
  }
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
}

}  // namespace sy::ops
