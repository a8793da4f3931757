// The remaining CPU ops (cross-entropy, AdamW, clipping, non-finite
// counts, sampling) against hand-computed values and finite differences.
// (matmul_test, ffn_ops_test, norm_rope_embedding_test and
// attention_op_test have the rest.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "grad_check.h"
#include "ops/adamw.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/finite.h"
#include "ops/sampling.h"

namespace sy {
namespace {

using testing::expect_gradient;
using testing::randn;
using testing::same_bits;
using testing::tokens;
using testing::zeros;

// AdamW with a shadow: w, m and v exactly as without one, and the shadow is
// bf16 of the updated w, every element.
TEST(AdamW, WritesTheBf16ShadowOfTheUpdatedWeight) {
  Rng rng(0xada);
  Tensor w = randn({1000}, rng), g = randn({1000}, rng), m = randn({1000}, rng, 0.1f), v = zeros({1000});
  Tensor w2 = w.clone(), m2 = m.clone(), v2 = v.clone();
  Tensor shadow = Tensor::empty({1000}, DType::bf16, host_ctx());
  std::memset(shadow.raw(), 0xff, shadow.nbytes());  // NaN: an element never written stays NaN
  const ops::AdamWConfig c{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
  ops::adamw_update(host_ctx(), {{&w, &g, &m, &v, true, &shadow}}, c, 3);
  ops::adamw_update(host_ctx(), {{&w2, &g, &m2, &v2, true}}, c, 3);
  EXPECT_TRUE(same_bits(w, w2) && same_bits(m, m2) && same_bits(v, v2));
  EXPECT_TRUE(same_bits(shadow, w.to(DType::bf16)));
}

TEST(CrossEntropy, UniformLogitsGiveLogV) {
  Tensor logits = zeros({3, 256}), stats = zeros({3, 2});
  float l = ops::cross_entropy_forward(host_ctx(), {stats, logits, tokens({0, 7, 255})});
  EXPECT_NEAR(l, std::log(256.f), 1e-5);
  for (int n = 0; n < 3; ++n) {  // (m, 1/Z) = (0, 1/256), exactly
    EXPECT_EQ(stats.f32()[2 * n], 0.f);
    EXPECT_EQ(stats.f32()[2 * n + 1], 1.f / 256.f);
  }
}

// A hand-computed row: logits (0, ln 3) give p = (1/4, 3/4); target 1: loss
// -log(3/4); dlogits = scale (p - onehot) / N with N = 1.
TEST(CrossEntropy, HandComputedRow) {
  Tensor logits = zeros({1, 2}), stats = zeros({1, 2}), d = zeros({1, 2});
  logits.f32()[1] = std::log(3.f);
  const Tensor y = tokens({1});
  const float l = ops::cross_entropy_forward(host_ctx(), {stats, logits, y});
  EXPECT_NEAR(l, -std::log(0.75), 1e-6);
  EXPECT_NEAR(stats.f32()[0], std::log(3.f), 1e-7);
  EXPECT_NEAR(stats.f32()[1], 0.75f, 1e-7);  // 1 / Z, Z = e^(0 - ln 3) + e^0 = 4/3
  ops::cross_entropy_backward(host_ctx(), {d, logits, stats, y, 2.f});
  EXPECT_NEAR(d.f32()[0], 2 * 0.25, 1e-6);
  EXPECT_NEAR(d.f32()[1], 2 * (0.75 - 1), 1e-6);
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(8);
  Tensor logits = randn({4, 9}, rng), stats = zeros({4, 2});
  const Tensor y = tokens({0, 8, 3, 3});
  auto loss = [&] { return static_cast<double>(ops::cross_entropy_forward(ctx, {stats, logits, y})); };
  loss();
  Tensor d = zeros({4, 9});
  ops::cross_entropy_backward(ctx, {d, logits, stats, y});
  expect_gradient("dlogits", logits, d, loss, 1e-2);
}

TEST(CrossEntropy, RefusesBadTargetsAndAliasedGradients) {
  Ctx& ctx = host_ctx();
  Tensor logits = zeros({2, 5}), stats = zeros({2, 2});
  EXPECT_THROW(ops::cross_entropy_forward(ctx, {stats, logits, tokens({0, 5})}), Error);
  EXPECT_THROW(ops::cross_entropy_forward(ctx, {stats, logits, tokens({-1, 0})}), Error);
  Tensor wrong = zeros({2, 1});
  EXPECT_THROW(ops::cross_entropy_forward(ctx, {wrong, logits, tokens({0, 1})}), Error);
  ops::cross_entropy_forward(ctx, {stats, logits, tokens({0, 1})});
  EXPECT_THROW(ops::cross_entropy_backward(ctx, {logits, logits, stats, tokens({0, 1})}), Error);
}

TEST(AdamW, FirstStepMovesByLrTimesSign) {
  // Step 1: mhat = g, vhat = g^2, so the update is lr * g/|g| (+ decay).
  Tensor w = zeros({2}), g = zeros({2}), m = zeros({2}), v = zeros({2});
  w.f32()[0] = 1, w.f32()[1] = -1;
  g.f32()[0] = 0.3f, g.f32()[1] = -4;
  ops::AdamWConfig c{0.1f, 0.9f, 0.95f, 1e-8f, 0.5f};
  ops::adamw_update(host_ctx(), {{&w, &g, &m, &v, true}}, c, 1);
  EXPECT_NEAR(w.f32()[0], 1 - 0.1f * (1 + 0.5f * 1), 1e-6);
  EXPECT_NEAR(w.f32()[1], -1 - 0.1f * (-1 + 0.5f * -1), 1e-6);
}

// Global-norm clipping as the trainer composes it: norm = sqrt(grad_sq_sum),
// then clip_to_norm; returns the norm before clipping.
float clip_grad_norm(const std::vector<Tensor*>& grads, float max_norm) {
  const std::vector<const Tensor*> cgrads(grads.begin(), grads.end());
  const float norm = static_cast<float>(std::sqrt(ops::grad_sq_sum(host_ctx(), cgrads)));
  ops::clip_to_norm(host_ctx(), grads, norm, max_norm);
  return norm;
}

TEST(ClipGradNorm, ScalesToMaxNorm) {
  Tensor a = zeros({2}), b = zeros({1});
  a.f32()[0] = 3, a.f32()[1] = 0, b.f32()[0] = 4;  // norm 5
  float n = clip_grad_norm({&a, &b}, 1.f);
  EXPECT_FLOAT_EQ(n, 5.f);
  EXPECT_NEAR(a.f32()[0], 0.6f, 1e-6);
  EXPECT_NEAR(b.f32()[0], 0.8f, 1e-6);
  EXPECT_FLOAT_EQ(clip_grad_norm({&a, &b}, 0.f), 1.f);  // disabled: untouched
}

TEST(CountNonFinite, CountsNanAndBothInfinities) {
  Tensor x = Tensor::from_host<float>({1.f, NAN, 0.f, INFINITY, -INFINITY, 3e38f, -0.f});
  EXPECT_EQ(ops::count_nonfinite(host_ctx(), x), 3);
  EXPECT_EQ(ops::count_nonfinite(host_ctx(), Tensor::zeros({5}, DType::f32, host_ctx())), 0);
}

// p = (0.1, 0.6, 0.3): most probable first is 1, 2, 0, so u splits (0, 1)
// at the cumulative shares of that order.
TEST(SampleToken, InverseCdfOverTheSortedCandidates) {
  Tensor p = Tensor::from_host<float>({0.1f, 0.6f, 0.3f});
  auto draw = [&](float u, float temperature, int top_k) {
    return ops::sample_token(host_ctx(), p, {temperature, top_k}, u);
  };
  EXPECT_EQ(draw(0.59f, 1.f, 0), 1);
  EXPECT_EQ(draw(0.61f, 1.f, 0), 2);
  EXPECT_EQ(draw(0.89f, 1.f, 0), 2);
  EXPECT_EQ(draw(0.91f, 1.f, 0), 0);
  // top_k = 2 keeps 1 and 2, renormalised: 0.6 / 0.9 = 0.667.
  EXPECT_EQ(draw(0.65f, 1.f, 2), 1);
  EXPECT_EQ(draw(0.68f, 1.f, 2), 2);
  EXPECT_EQ(draw(0.999f, 1.f, 2), 2);
  // Temperature 2: q ~ sqrt(p) = (0.316, 0.775, 0.548); 1 takes 0.775 / 1.639 = 0.473.
  EXPECT_EQ(draw(0.47f, 2.f, 0), 1);
  EXPECT_EQ(draw(0.48f, 2.f, 0), 2);
  // Greedy, and top-1, whatever u.
  EXPECT_EQ(draw(0.999f, 0.f, 0), 1);
  EXPECT_EQ(draw(0.999f, 1.f, 1), 1);
  // Ties go to the lower id; a zero probability is never drawn.
  Tensor tie = Tensor::from_host<float>({0.f, 0.5f, 0.5f});
  EXPECT_EQ(ops::sample_token(host_ctx(), tie, {0.f, 0}, 0.5f), 1);
  EXPECT_EQ(ops::sample_token(host_ctx(), tie, {1.f, 0}, 0.999999f), 2);
  EXPECT_THROW(ops::sample_token(host_ctx(), p, {1.f, 0}, 1.f), Error);
}

// vocab: ids at or past it (a model's padding past its tokenizer's pieces)
// are never drawn, the rest renormalised among themselves.
TEST(SampleToken, OnlyIdsBelowVocab) {
  Tensor p = Tensor::from_host<float>({0.1f, 0.3f, 0.6f});
  auto draw = [&](float u, float temperature, int top_k) {
    return ops::sample_token(host_ctx(), p, {temperature, top_k, 2}, u);
  };
  EXPECT_EQ(draw(0.999f, 0.f, 0), 1);  // greedy: id 2 is the most probable, but not a candidate
  EXPECT_EQ(draw(0.74f, 1.f, 0), 1);   // 0.3 / 0.4 = 0.75 to id 1, the rest to id 0
  EXPECT_EQ(draw(0.76f, 1.f, 0), 0);
  EXPECT_EQ(draw(0.999999f, 1.f, 5), 0);
  EXPECT_THROW(ops::sample_token(host_ctx(), p, {1.f, 0, 4}, 0.5f), Error);
}

}  // namespace
}  // namespace sy
