// ops/layernorm.h, ops/rmsnorm.h, ops/rope.h and ops/embedding.h against
// hand-computed values and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "grad_check.h"
#include "ops/embedding.h"
#include "ops/layernorm.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace sy {
namespace {

using testing::dot;
using testing::expect_gradient;
using testing::randn;
using testing::tokens;
using testing::zeros;

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

TEST(RmsNorm, HandComputed) {
  Tensor x = zeros({1, 4}), w = zeros({4}), y = zeros({1, 4}), rstd = zeros({1});
  const float xs[] = {1, -2, 3, 4}, ws[] = {1, 2, 0.5f, -1};
  std::copy(xs, xs + 4, x.f32());
  std::copy(ws, ws + 4, w.f32());
  ops::rmsnorm_forward(host_ctx(), {y, rstd, x, w});
  // mean(x^2) = (1 + 4 + 9 + 16) / 4 = 7.5; no mean is subtracted.
  const double r = 1.0 / std::sqrt(7.5 + 1e-5);
  EXPECT_NEAR(rstd.f32()[0], r, 1e-6);
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(y.f32()[c], xs[c] * r * ws[c], 1e-6) << c;
}

TEST(RmsNorm, GradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(22);
  const int64_t N = 5, C = 7;
  Tensor x = randn({N, C}, rng), w = randn({C}, rng), R = randn({N, C}, rng), rstd = zeros({N});
  auto loss = [&] {
    Tensor y = zeros({N, C});
    ops::rmsnorm_forward(ctx, {y, rstd, x, w});
    return dot(y, R);
  };
  loss();
  Tensor dx = zeros({N, C}), dw = zeros({C});
  ops::rmsnorm_backward(ctx, {dx, dw, R, x, w, rstd});
  expect_gradient("dx", x, dx, loss, 1e-3);
  expect_gradient("dw", w, dw, loss, 1e-3);
}

// The Hugging Face rotate_half pairing by hand: position 1, one head of
// D = 4, base 10000: theta = (1, 10000^(-1/2) = 0.01); element 0 pairs with
// element 2 (angle 1) and element 1 with element 3 (angle 0.01).
TEST(Rope, HandComputedRotateHalfPairing) {
  Tensor x = zeros({2, 4});
  const float v[] = {1, 2, 3, 4};
  std::copy(v, v + 4, x.f32());
  std::copy(v, v + 4, x.f32() + 4);
  const Tensor pos = tokens({0, 1});
  ops::rope_forward(host_ctx(), {x, pos, 0, 1, 4, 10000.0});
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(x.f32()[i], v[i]) << "position 0 is not rotated";
  const float* y = x.f32() + 4;
  const double c0 = std::cos(1.0), s0 = std::sin(1.0), c1 = std::cos(0.01), s1 = std::sin(0.01);
  EXPECT_NEAR(y[0], 1 * c0 - 3 * s0, 1e-6);  // x0 cos - x2 sin
  EXPECT_NEAR(y[1], 2 * c1 - 4 * s1, 1e-6);  // x1 cos - x3 sin
  EXPECT_NEAR(y[2], 3 * c0 + 1 * s0, 1e-6);  // x2 cos + x0 sin
  EXPECT_NEAR(y[3], 4 * c1 + 2 * s1, 1e-6);  // x3 cos + x1 sin
  // Interleaved pairs (0,1), (2,3) would give x0 cos - x1 sin = 1 cos 1 - 2 sin 1.
  EXPECT_GT(std::fabs(y[0] - (1 * c0 - 2 * s0)), 0.5);
}

TEST(Rope, PositionsDefaultToRowModSeqLenAndLeaveLaterColumnsAlone) {
  Ctx& ctx = host_ctx();
  Rng rng(23);
  const int64_t T = 5, N = 2 * T, H = 3, D = 6, W = 3 * H * D;  // a packed qkv row
  Tensor a = randn({N, W}, rng);
  Tensor b = a.clone(), orig = a.clone();
  std::vector<int32_t> p(N);
  for (int64_t n = 0; n < N; ++n) p[n] = static_cast<int32_t>(n % T);
  ops::rope_forward(ctx, {a, Tensor(), T, 2 * H, D, 500.0});
  ops::rope_forward(ctx, {b, tokens(p), 0, 2 * H, D, 500.0});
  for (int64_t i = 0; i < N * W; ++i) ASSERT_EQ(a.f32()[i], b.f32()[i]) << i;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 2 * H * D; c < W; ++c) ASSERT_EQ(a.f32()[n * W + c], orig.f32()[n * W + c]) << "v changed";
  // A rotation keeps each pair's norm.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < D / 2; ++i) {
      auto sq = [&](const Tensor& t, int64_t j) { return t.f32()[n * W + j] * t.f32()[n * W + j]; };
      EXPECT_NEAR(sq(a, i) + sq(a, i + D / 2), sq(orig, i) + sq(orig, i + D / 2), 1e-4);
    }
  // Backward is the inverse rotation: it undoes the forward.
  ops::rope_backward(ctx, {a, Tensor(), T, 2 * H, D, 500.0});
  for (int64_t i = 0; i < N * W; ++i) EXPECT_NEAR(a.f32()[i], orig.f32()[i], 1e-5) << i;
}

TEST(Rope, GradientMatchesFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(24);
  const int64_t N = 7, H = 2, D = 8, W = 3 * H * D;
  Tensor x = randn({N, W}, rng), R = randn({N, W}, rng);
  const Tensor pos = tokens({0, 3, 1, 17, 250, 5, 2});  // arbitrary, as a depth-routed block's
  auto loss = [&] {
    Tensor y = x.clone();
    ops::rope_forward(ctx, {y, pos, 0, 2 * H, D, 10000.0});
    return dot(y, R);
  };
  Tensor dx = R.clone();  // dy = R, turned into dx in place
  ops::rope_backward(ctx, {dx, pos, 0, 2 * H, D, 10000.0});
  expect_gradient("dx", x, dx, loss, 1e-2, 2e-2, 200);
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

// Rotary positions: no position table; out is the token's row.
TEST(Embedding, WithoutPositionTable) {
  Ctx& ctx = host_ctx();
  Rng rng(27);
  const int64_t V = 11, C = 4, T = 3;
  const Tensor tok = tokens({1, 5, 1, 10, 0, 5});
  Tensor wte = randn({V, C}, rng), out = zeros({6, C}), none;
  ops::embedding_forward(ctx, {out, tok, wte, Tensor(), T});
  EXPECT_EQ(out.f32()[3 * C + 2], wte.f32()[10 * C + 2]);
  Tensor dwte = zeros({V, C}), R = randn({6, C}, rng);
  ops::embedding_backward(ctx, {dwte, none, R, tok, T});
  EXPECT_FLOAT_EQ(dwte.f32()[5 * C + 1], R.f32()[1 * C + 1] + R.f32()[5 * C + 1]);
}

}  // namespace
}  // namespace sy
