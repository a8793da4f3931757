// ops/decode_attention.h: one query per head against a key/value cache, by
// hand (one key, two keys, grouped heads), against the last row of causal
// attention (ops/attention.h) at every position, and its refusals.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "ops/attention.h"
#include "ops/decode_attention.h"

namespace sy {
namespace {

Tensor host(Shape s, std::vector<float> v) {
  Tensor t = Tensor::from_host(v);
  return t.reshape(std::move(s));
}

TEST(DecodeAttention, OneKeyIsItsValue) {
  // H 2 query heads over G 1 key/value head of D 2: both read v.
  Tensor o = Tensor::empty({4}, DType::f32, host_ctx());
  const Tensor q = host({4}, {1, 2, -3, 4}), k = host({1, 2}, {0.5f, -1}), v = host({1, 2}, {7, -8});
  ops::decode_attention(host_ctx(), {o, q, k, v, 1, 2, 1});
  EXPECT_EQ(o.to_vector<float>(), (std::vector<float>{7, -8, 7, -8}));
}

TEST(DecodeAttention, TwoKeysByHandWithGroupedHeads) {
  // H 4, G 2, D 2: heads 0, 1 read key/value head 0; heads 2, 3 head 1.
  // Cache rows: k = [k0 | k1] per position, v likewise.
  const Tensor k = host({2, 4}, {1, 0, 0, 1,  /* position 0 */ 0, 1, 1, 0 /* position 1 */});
  const Tensor v = host({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
  const Tensor q = host({8}, {2, 0, 0, 0, 0, 2, 1, 1});
  Tensor o = Tensor::empty({8}, DType::f32, host_ctx());
  ops::decode_attention(host_ctx(), {o, q, k, v, 2, 4, 2});
  const double s = 1 / std::sqrt(2.0);
  auto mix = [](double a0, double a1, double x0, double x1) {  // softmax(a0, a1) . (x0, x1)
    const double e0 = std::exp(a0), e1 = std::exp(a1);
    return (e0 * x0 + e1 * x1) / (e0 + e1);
  };
  // head 0: q (2, 0) . k0 of positions 0, 1: 2 s, 0; head 1: zeros: even;
  // head 2: q (0, 2) . k1: 2 s, 0; head 3: q (1, 1) . k1: s, s.
  const std::vector<double> want{mix(2 * s, 0, 1, 5), mix(2 * s, 0, 2, 6), mix(0, 0, 1, 5),     mix(0, 0, 2, 6),
                                 mix(2 * s, 0, 3, 7), mix(2 * s, 0, 4, 8), mix(s, s, 3, 7),     mix(s, s, 4, 8)};
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(o.f32()[i], want[i], 1e-6) << i;
}

TEST(DecodeAttention, EveryPositionIsThatRowOfCausalAttention) {
  const int64_t T = 37, H = 3, D = 16, C = H * D;
  Rng rng(11);
  Tensor qkv = Tensor::empty({1, T, 3 * C}, DType::f32, host_ctx());
  for (int64_t i = 0; i < qkv.numel(); ++i) qkv.f32()[i] = static_cast<float>(rng.normal());
  Tensor out = Tensor::empty({1, T, C}, DType::f32, host_ctx()), lse = Tensor::empty({1, H, T}, DType::f32, host_ctx());
  ops::attention_forward(host_ctx(), {out, lse, qkv, {1, T, C, H}});
  Tensor k = Tensor::empty({T, C}, DType::f32, host_ctx()), v = k.clone();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < C; ++c) {
      k.f32()[t * C + c] = qkv.f32()[t * 3 * C + C + c];
      v.f32()[t * C + c] = qkv.f32()[t * 3 * C + 2 * C + c];
    }
  for (int64_t t = 0; t < T; ++t) {
    Tensor q = Tensor::empty({C}, DType::f32, host_ctx()), o = q.clone();
    for (int64_t c = 0; c < C; ++c) q.f32()[c] = qkv.f32()[t * 3 * C + c];
    ops::decode_attention(host_ctx(), {o, q, k, v, t + 1, H, H});
    double num = 0, den = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double want = out.f32()[t * C + c], d = o.f32()[c] - want;
      num += d * d, den += want * want;
    }
    EXPECT_LE(std::sqrt(num / den), 1e-6) << "position " << t;
  }
}

TEST(DecodeAttention, RefusesWhatItCannotRead) {
  Tensor o = Tensor::empty({8}, DType::f32, host_ctx()), q = o.clone();
  const Tensor k = Tensor::zeros({3, 4}, DType::f32, host_ctx()), v = k.clone();
  EXPECT_THROW(ops::decode_attention(host_ctx(), {o, q, k, v, 2, 3, 2}), Error);  // G 2 does not divide H 3
  EXPECT_THROW(ops::decode_attention(host_ctx(), {o, q, k, v, 0, 4, 2}), Error);  // nothing to attend
  EXPECT_THROW(ops::decode_attention(host_ctx(), {o, q, k, v, 4, 4, 2}), Error);  // 4 positions, 3 cached rows
  EXPECT_THROW(ops::decode_attention(host_ctx(), {o, q, k, v, 2, 4, 1}), Error);  // rows of 2 heads for G 1
}

}  // namespace
}  // namespace sy
