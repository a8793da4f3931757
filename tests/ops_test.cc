// Every CPU op's backward against finite differences, plus hand-computed
// forward values.
#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/finite.h"
#include "ops/gelu.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"
#include "ops/sampling.h"

namespace sy {
namespace {

using testing::dot;
using testing::expect_gradient;
using testing::randn;
using testing::zeros;

Tensor tokens(const std::vector<int32_t>& t) { return Tensor::from_host(t); }

TEST(Matmul, HandComputed) {
  Ctx& ctx = host_ctx();
  Tensor x = zeros({1, 2}), W = zeros({2, 2}), b = zeros({2}), y = zeros({1, 2});
  x.f32()[0] = 1, x.f32()[1] = 2;
  float w[] = {1, 2, 3, 4};
  std::copy(w, w + 4, W.f32());
  b.f32()[0] = 0.5f, b.f32()[1] = -1;
  ops::matmul_forward(ctx, {y, x, W, b});
  EXPECT_FLOAT_EQ(y.f32()[0], 1 * 1 + 2 * 3 + 0.5f);
  EXPECT_FLOAT_EQ(y.f32()[1], 1 * 2 + 2 * 4 - 1.f);
}

TEST(Matmul, GradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(1);
  const int64_t N = 7, K = 5, M = 3;
  Tensor x = randn({N, K}, rng), W = randn({K, M}, rng), b = randn({M}, rng), R = randn({N, M}, rng);
  auto loss = [&] {
    Tensor y = zeros({N, M});
    ops::matmul_forward(ctx, {y, x, W, b});
    return dot(y, R);
  };
  Tensor dx = zeros({N, K}), dW = zeros({K, M}), db = zeros({M});
  ops::matmul_backward(ctx, {&dx, &dW, &db, R, x, W});
  expect_gradient("dx", x, dx, loss);
  expect_gradient("dW", W, dW, loss);
  expect_gradient("db", b, db, loss);
}

TEST(Matmul, ShapeMismatchNamesBothShapes) {
  Tensor x = zeros({2, 3}), W = zeros({4, 5}), y = zeros({2, 5});
  try {
    ops::matmul_forward(host_ctx(), {y, x, W, Tensor()});
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("expected [3, 5], got [4, 5]"), std::string::npos) << e.what();
  }
}

TEST(LayerNorm, HandComputed) {
  Tensor x = zeros({1, 3}), w = zeros({3}), b = zeros({3}), y = zeros({1, 3}), mean = zeros({1}),
         rstd = zeros({1});
  x.f32()[0] = 1, x.f32()[1] = 2, x.f32()[2] = 3;
  w.fill(2.f);
  b.fill(1.f);
  ops::layernorm_forward(host_ctx(), {y, mean, rstd, x, w, b});
  // mean 2, var 2/3: xhat = [-1.2247, 0, 1.2247]
  EXPECT_NEAR(mean.f32()[0], 2.f, 1e-6);
  EXPECT_NEAR(y.f32()[0], 1 - 2 * 1.2247449f, 1e-4);
  EXPECT_NEAR(y.f32()[1], 1.f, 1e-6);
  EXPECT_NEAR(y.f32()[2], 1 + 2 * 1.2247449f, 1e-4);
}

TEST(LayerNorm, GradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(2);
  const int64_t N = 5, C = 7;
  Tensor x = randn({N, C}, rng), w = randn({C}, rng), b = randn({C}, rng), R = randn({N, C}, rng);
  Tensor mean = zeros({N}), rstd = zeros({N});
  auto loss = [&] {
    Tensor y = zeros({N, C});
    ops::layernorm_forward(ctx, {y, mean, rstd, x, w, b});
    return dot(y, R);
  };
  loss();
  Tensor dx = zeros({N, C}), dw = zeros({C}), db = zeros({C});
  ops::layernorm_backward(ctx, {dx, &dw, &db, R, x, w, mean, rstd});
  expect_gradient("dx", x, dx, loss, 1e-3);
  expect_gradient("dw", w, dw, loss, 1e-3);
  expect_gradient("db", b, db, loss, 1e-3);
}

TEST(Gelu, HandComputedAndGradient) {
  Ctx& ctx = host_ctx();
  Tensor x = zeros({3}), y = zeros({3});
  x.f32()[0] = 0, x.f32()[1] = 1, x.f32()[2] = -2;
  ops::gelu_forward(ctx, y, x);
  EXPECT_NEAR(y.f32()[0], 0.f, 1e-7);
  EXPECT_NEAR(y.f32()[1], 0.841192f, 1e-5);   // tanh-approximate GELU(1)
  EXPECT_NEAR(y.f32()[2], -0.045402f, 1e-5);  // GELU(-2)
  Rng rng(3);
  Tensor xs = randn({37}, rng, 2.f), R = randn({37}, rng);
  auto loss = [&] {
    Tensor ys = zeros({37});
    ops::gelu_forward(ctx, ys, xs);
    return dot(ys, R);
  };
  Tensor dx = zeros({37});
  ops::gelu_backward(ctx, dx, R, xs);
  expect_gradient("dx", xs, dx, loss, 1e-3);
}

TEST(Embedding, ForwardAndGradient) {
  Ctx& ctx = host_ctx();
  Rng rng(4);
  const int64_t V = 11, C = 4, T = 3;
  const Tensor tok = tokens({1, 5, 1, 10, 0, 5});
  Tensor wte = randn({V, C}, rng), wpe = randn({T, C}, rng), R = randn({6, C}, rng);
  Tensor out = zeros({6, C});
  ops::embedding_forward(ctx, {out, tok, wte, wpe, T});
  EXPECT_FLOAT_EQ(out.f32()[3 * C + 2], wte.f32()[10 * C + 2] + wpe.f32()[0 * C + 2]);
  auto loss = [&] {
    Tensor o = zeros({6, C});
    ops::embedding_forward(ctx, {o, tok, wte, wpe, T});
    return dot(o, R);
  };
  Tensor dwte = zeros({V, C}), dwpe = zeros({T, C});
  ops::embedding_backward(ctx, {dwte, dwpe, R, tok, T});
  expect_gradient("dwte", wte, dwte, loss);
  expect_gradient("dwpe", wpe, dwpe, loss);
}

TEST(Attention, SingleTokenReturnsItsValue) {
  Rng rng(5);
  ops::AttentionShape s{2, 1, 8, 2};
  Tensor qkv = randn({2, 1, 24}, rng), out = zeros({2, 1, 8}), att = zeros({2, 2, 1, 1});
  ops::attention_forward(host_ctx(), {out, att, qkv, s});
  for (int b = 0; b < 2; ++b)
    for (int c = 0; c < 8; ++c) EXPECT_FLOAT_EQ(out.f32()[b * 8 + c], qkv.f32()[b * 24 + 16 + c]);
}

TEST(Attention, CausalNoLeakFromFuture) {
  Ctx& ctx = host_ctx();
  Rng rng(6);
  ops::AttentionShape s{1, 7, 8, 2};
  Tensor qkv = randn({1, 7, 24}, rng), out = zeros({1, 7, 8}), out2 = zeros({1, 7, 8}), att = zeros({1, 2, 7, 7});
  ops::attention_forward(ctx, {out, att, qkv, s});
  for (int c = 0; c < 24; ++c) qkv.f32()[5 * 24 + c] += 3.f;  // change token 5
  ops::attention_forward(ctx, {out2, att, qkv, s});
  for (int t = 0; t < 5; ++t)
    for (int c = 0; c < 8; ++c) EXPECT_EQ(out.f32()[t * 8 + c], out2.f32()[t * 8 + c]) << "t=" << t;
  EXPECT_NE(out.f32()[5 * 8], out2.f32()[5 * 8]);
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(7);
  ops::AttentionShape s{2, 5, 6, 3};
  Tensor qkv = randn({2, 5, 18}, rng), R = randn({2, 5, 6}, rng);
  auto loss = [&] {
    Tensor out = zeros({2, 5, 6}), att = zeros({2, 3, 5, 5});
    ops::attention_forward(ctx, {out, att, qkv, s});
    return dot(out, R);
  };
  Tensor out = zeros({2, 5, 6}), att = zeros({2, 3, 5, 5}), dqkv = zeros({2, 5, 18});
  ops::attention_forward(ctx, {out, att, qkv, s});
  ops::attention_backward(ctx, {dqkv, R, qkv, att, s});
  expect_gradient("dqkv", qkv, dqkv, loss, 1e-3, 2e-2, 90);
}

TEST(CrossEntropy, UniformLogitsGiveLogV) {
  Tensor logits = zeros({3, 256}), probs = zeros({3, 256});
  float l = ops::cross_entropy_forward(host_ctx(), {probs, logits, tokens({0, 7, 255})});
  EXPECT_NEAR(l, std::log(256.f), 1e-5);
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(8);
  Tensor logits = randn({4, 9}, rng), probs = zeros({4, 9});
  const Tensor y = tokens({0, 8, 3, 3});
  auto loss = [&] { return static_cast<double>(ops::cross_entropy_forward(ctx, {probs, logits, y})); };
  loss();
  Tensor d = zeros({4, 9});
  ops::cross_entropy_backward(ctx, {d, probs, y});
  expect_gradient("dlogits", logits, d, loss, 1e-2);
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

}  // namespace
}  // namespace sy
