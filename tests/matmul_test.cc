// ops/matmul.h against hand-computed values and finite differences, and
// its bf16 mode (Config.precision BF16): the fp32 op on rounded operands,
// the bias and GELU epilogues, what the producers of its inputs round.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "grad_check.h"
#include "ops/elementwise.h"
#include "ops/gelu.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"

namespace sy {
namespace {

using testing::dot;
using testing::expect_gradient;
using testing::randn;
using testing::rel_diff;
using testing::rounded;
using testing::same_bits;
using testing::zeros;

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

// y = x W^T with W (M, K): the tied LM head's product.
TEST(Matmul, TransposedWeightMatchesExplicitTransposeAndFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(21);
  const int64_t N = 7, K = 5, M = 3;
  Tensor x = randn({N, K}, rng), W = randn({M, K}, rng), R = randn({N, M}, rng);
  Tensor Wt = zeros({K, M});
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) Wt.f32()[k * M + m] = W.f32()[m * K + k];
  Tensor y = zeros({N, M}), yt = zeros({N, M});
  ops::matmul_forward(ctx, {y, x, W, Tensor(), false, true});
  ops::matmul_forward(ctx, {yt, x, Wt, Tensor()});
  for (int64_t i = 0; i < N * M; ++i) EXPECT_NEAR(y.f32()[i], yt.f32()[i], 1e-5f);
  auto loss = [&] {
    Tensor o = zeros({N, M});
    ops::matmul_forward(ctx, {o, x, W, Tensor(), false, true});
    return dot(o, R);
  };
  Tensor dx = zeros({N, K}), dW = zeros({M, K});
  ops::matmul_backward(ctx, {&dx, &dW, nullptr, R, x, W, true});
  expect_gradient("dx", x, dx, loss);
  expect_gradient("dW", W, dW, loss);
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

// ---- bf16 mode (Config.precision BF16) ----

TEST(ToBf16, RoundsToNearestEven) {
  const float ulp = std::ldexp(1.f, -7);  // bf16's spacing in [1, 2)
  Tensor x = Tensor::from_host(std::vector<float>{1 + ulp / 2, 1 + 1.5f * ulp, 1 + 0.51f * ulp, -3.f, 1e-40f,
                                                  std::nanf("")});
  Tensor y = Tensor::empty({6}, DType::bf16, host_ctx());
  ops::to_bf16(host_ctx(), y, x);
  const std::vector<float> got = y.to(DType::f32).to_vector<float>();
  EXPECT_EQ(got[0], 1.f) << "a tie goes to the even neighbour";
  EXPECT_EQ(got[1], 1 + 2 * ulp) << "a tie goes to the even neighbour";
  EXPECT_EQ(got[2], 1 + ulp);
  EXPECT_EQ(got[3], -3.f);
  EXPECT_EQ(got[4], bf16_to_f32(f32_to_bf16(1e-40f)));
  EXPECT_TRUE(std::isnan(got[5]));
}

// The CPU's bf16 mode is the fp32 op run on bf16-rounded operands (what the
// GPU's bf16 GEMMs are checked against): bit for bit, for the plain and the
// transposed weight; db is the fp32 column sum of the unrounded dy.
TEST(Matmul, Bf16ModeIsTheFp32OpOnRoundedOperands) {
  Ctx& ctx = host_ctx();
  Rng rng(0xbf);
  const int64_t N = 33, K = 40, M = 17;
  for (bool transposed : {false, true}) {
    SCOPED_TRACE(transposed ? "W transposed" : "W");
    const Shape ws = transposed ? Shape{M, K} : Shape{K, M};
    Tensor x = randn({N, K}, rng), W = randn(ws, rng), b = randn({M}, rng), dy = randn({N, M}, rng);
    const Tensor W16 = W.to(DType::bf16), xr = rounded(x), Wr = rounded(W), dyr = rounded(dy);
    Tensor y = zeros({N, M}), y_ref = zeros({N, M}), y_fp32 = zeros({N, M});
    ops::matmul_forward(ctx, {y, x, W, b, false, transposed, &W16});
    ops::matmul_forward(ctx, {y_ref, xr, Wr, b, false, transposed});
    ops::matmul_forward(ctx, {y_fp32, x, W, b, false, transposed});
    EXPECT_TRUE(same_bits(y, y_ref)) << "forward";
    // The rounding is there: bf16's relative error ~2^-9 per operand.
    EXPECT_GT(rel_diff(y, y_fp32), 1e-4);
    EXPECT_LT(rel_diff(y, y_fp32), 1e-2);

    Tensor dx = zeros({N, K}), dW = zeros(ws), db = zeros({M});
    Tensor dx_ref = zeros({N, K}), dW_ref = zeros(ws), db_ref = zeros({M});
    ops::matmul_backward(ctx, {&dx, &dW, &db, dy, x, W, transposed, &W16});
    ops::matmul_backward(ctx, {&dx_ref, &dW_ref, nullptr, dyr, xr, Wr, transposed});
    ops::matmul_backward(ctx, {nullptr, nullptr, &db_ref, dy, x, W, transposed});
    EXPECT_TRUE(same_bits(dx, dx_ref)) << "dx";
    EXPECT_TRUE(same_bits(dW, dW_ref)) << "dW";
    EXPECT_TRUE(same_bits(db, db_ref)) << "db";
  }
}

// A bf16 output adds its bias rounded to bf16 (ops/matmul.h), by hand: x W
// = 2^-4 2^-4 = 2^-8 (exact), b = 1 + 2^-9. The bias rounds to 1, and
// 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7: to even, 1. Had the
// fp32 bias been added, 1 + 2^-8 + 2^-9 rounds up to 1 + 2^-7. An fp32
// output keeps the fp32 bias. (Planted: the CPU adding the fp32 bias to its
// bf16 output fails the first check.)
TEST(Matmul, Bf16OutputAddsItsBiasRoundedToBf16) {
  Ctx& ctx = host_ctx();
  const Tensor x = Tensor::from_host(std::vector<float>{0x1p-4f}).reshape({1, 1});
  const Tensor W = Tensor::from_host(std::vector<float>{0x1p-4f}).reshape({1, 1}), W16 = W.to(DType::bf16);
  const Tensor b = Tensor::from_host(std::vector<float>{1.f + 0x1p-9f});
  Tensor y16 = Tensor::empty({1, 1}, DType::bf16, ctx), y32 = zeros({1, 1});
  ops::matmul_forward(ctx, {y16, x, W, b, false, false, &W16});
  ops::matmul_forward(ctx, {y32, x, W, b, false, false, &W16});
  EXPECT_EQ(y16.to(DType::f32).f32()[0], 1.f) << "bf16 output: 1 + 2^-8 (the rounded bias), to even";
  EXPECT_EQ(y32.f32()[0], 1.f + 0x1p-8f + 0x1p-9f) << "fp32 output: the fp32 bias";
}

// The GELU epilogue (ops/matmul.h) in fp32 is exactly the separate ops:
// matmul then gelu_forward; matmul's dx then gelu_backward on zeros.
TEST(Matmul, GeluEpilogueInFp32IsTheSeparateOps) {
  Ctx& ctx = host_ctx();
  Rng rng(0x6e1);
  const int64_t N = 7, K = 5, M = 6;
  const Tensor x = randn({N, K}, rng), W = randn({K, M}, rng), b = randn({M}, rng), dy = randn({N, M}, rng);
  Tensor y = zeros({N, M}), act = zeros({N, M}), y_ref = zeros({N, M}), act_ref = zeros({N, M});
  ops::MatmulArgs fused{y, x, W, b};
  fused.gelu = &act;
  ops::matmul_forward(ctx, fused);
  ops::matmul_forward(ctx, {y_ref, x, W, b});
  ops::gelu_forward(ctx, act_ref, y_ref);
  EXPECT_TRUE(same_bits(y, y_ref) && same_bits(act, act_ref));
  Tensor dx = Tensor::from_host(std::vector<float>(N * K, 7.f)).reshape({N, K}), dw = zeros({K, M}), db = zeros({M});
  Tensor dact = zeros({N, K}), dx_ref = zeros({N, K}), dw_ref = zeros({K, M}), db_ref = zeros({M});
  const Tensor pre = randn({N, K}, rng);
  ops::MatmulBackwardArgs back{&dx, &dw, &db, dy, x, W};
  back.dx_accumulate = false, back.gelu_pre = &pre;
  ops::matmul_backward(ctx, back);
  ops::matmul_backward(ctx, {&dact, &dw_ref, &db_ref, dy, x, W});
  ops::gelu_backward(ctx, dx_ref, dact, pre);
  EXPECT_TRUE(same_bits(dx, dx_ref)) << "dx written (the 7s not read)";
  EXPECT_TRUE(same_bits(dw, dw_ref) && same_bits(db, db_ref));
}

// In bf16 the epilogue rounds once, from the GEMM's fp32 value. Forward:
// z = 1 + 2^-9 (x = [1, 1], W = [1, 2^-9]^T), y = bf16(z) = 1, and
// gelu(z) = 0.84331 rounds to 0.84375, where gelu(bf16(z)) = gelu(1) =
// 0.84119 would round to 0.83984375. Backward: g = dy W^T = 1 + 3 2^-9
// (dy = [1, 1], W = [1, 3 2^-9]), gelu'(1) = 1.08296: g gelu'(1) = 1.08931
// rounds to 1.0859375, where bf16(g) = 1.0078125 would give 1.09375.
TEST(Matmul, Bf16GeluEpilogueRoundsOnceFromTheFp32Value) {
  Ctx& ctx = host_ctx();
  const Tensor x = Tensor::from_host(std::vector<float>{1.f, 1.f}).reshape({1, 2});
  const Tensor W = Tensor::from_host(std::vector<float>{1.f, 0x1p-9f}).reshape({2, 1}), W16 = W.to(DType::bf16);
  Tensor y = Tensor::empty({1, 1}, DType::bf16, ctx), act = Tensor::empty({1, 1}, DType::bf16, ctx);
  ops::MatmulArgs fwd{y, x, W, Tensor(), false, false, &W16};
  fwd.gelu = &act;
  ops::matmul_forward(ctx, fwd);
  EXPECT_EQ(y.to(DType::f32).f32()[0], 1.f);
  EXPECT_EQ(act.to(DType::f32).f32()[0], 0.84375f) << "gelu of the unrounded z";

  const Tensor x1 = Tensor::from_host(std::vector<float>{0.5f}).reshape({1, 1});
  const Tensor W2 = Tensor::from_host(std::vector<float>{1.f, 3 * 0x1p-9f}).reshape({1, 2}), W2_16 = W2.to(DType::bf16);
  const Tensor dy = Tensor::from_host(std::vector<float>{1.f, 1.f}).reshape({1, 2});
  const Tensor pre = Tensor::from_host(std::vector<float>{1.f}).reshape({1, 1}).to(DType::bf16);
  Tensor dx = Tensor::empty({1, 1}, DType::bf16, ctx);
  ops::MatmulBackwardArgs back{&dx, nullptr, nullptr, dy, x1, W2, false, &W2_16};
  back.dx_accumulate = false, back.gelu_pre = &pre;
  ops::matmul_backward(ctx, back);
  EXPECT_EQ(dx.to(DType::f32).f32()[0], 1.0859375f) << "the unrounded g scaled by gelu'(1)";
}

// The producers of a bf16 GEMM's input (layernorm, gelu) can write it
// rounded: their bf16 y is their f32 y rounded, bit for bit, and a bf16 x
// in matmul's bf16 mode is the f32 x it rounds from (y, the x_bf16 it hands
// back, and the backward's dW). A bf16 x outside bf16 mode is refused.
TEST(Bf16Inputs, ProducersRoundWhatTheGemmWouldRound) {
  Ctx& ctx = host_ctx();
  Rng rng(0xb16);
  const int64_t N = 19, C = 24;
  const Tensor x = randn({N, C}, rng, 2.f), w = randn({C}, rng), b = randn({C}, rng);
  for (const bool affine : {true, false}) {
    Tensor y = zeros({N, C}), m = zeros({N}), r = zeros({N});
    Tensor y16 = Tensor::empty({N, C}, DType::bf16, ctx), m16 = zeros({N}), r16 = zeros({N});
    const Tensor& ww = affine ? w : Tensor();
    const Tensor& bb = affine ? b : Tensor();
    ops::layernorm_forward(ctx, {y, m, r, x, ww, bb});
    ops::layernorm_forward(ctx, {y16, m16, r16, x, ww, bb});
    EXPECT_TRUE(same_bits(y16.to(DType::f32), rounded(y))) << "layernorm y, affine " << affine;
    EXPECT_TRUE(same_bits(m16, m) && same_bits(r16, r)) << "layernorm statistics";
  }
  Tensor g = zeros({N, C}), g16 = Tensor::empty({N, C}, DType::bf16, ctx);
  ops::gelu_forward(ctx, g, x);
  ops::gelu_forward(ctx, g16, x);
  EXPECT_TRUE(same_bits(g16.to(DType::f32), rounded(g))) << "gelu";

  const int64_t M = 9;
  const Tensor W = randn({C, M}, rng), W16 = W.to(DType::bf16), dy = randn({N, M}, rng);
  Tensor y = zeros({N, M}), y_in16 = zeros({N, M}), x16, x16_in;
  ops::matmul_forward(ctx, {y, g, W, b.rows(0, M), false, false, &W16, &x16});
  ops::matmul_forward(ctx, {y_in16, g16, W, b.rows(0, M), false, false, &W16, &x16_in});
  EXPECT_TRUE(same_bits(y_in16, y)) << "matmul on the producer's rounding";
  EXPECT_TRUE(same_bits(x16_in, x16)) << "the x_bf16 handed back";
  Tensor dx = zeros({N, C}), dW = zeros({C, M}), dx2 = zeros({N, C}), dW2 = zeros({C, M});
  ops::matmul_backward(ctx, {&dx, &dW, nullptr, dy, x16, W, false, &W16});
  ops::matmul_backward(ctx, {&dx2, &dW2, nullptr, dy, x16_in, W, false, &W16});
  EXPECT_TRUE(same_bits(dx2, dx) && same_bits(dW2, dW)) << "backward";
  // A dy whose values are bf16 (a bf16 kernel's gradient): as bf16 or widened,
  // the same dx, dW and db (the column sums of the same values).
  const Tensor dyr = rounded(dy), dy16 = dyr.to(DType::bf16);
  Tensor dxa = zeros({N, C}), dWa = zeros({C, M}), dba = zeros({M}), dxb = zeros({N, C}), dWb = zeros({C, M}),
         dbb = zeros({M});
  ops::matmul_backward(ctx, {&dxa, &dWa, &dba, dyr, x16, W, false, &W16});
  ops::matmul_backward(ctx, {&dxb, &dWb, &dbb, dy16, x16, W, false, &W16});
  EXPECT_TRUE(same_bits(dxb, dxa) && same_bits(dWb, dWa) && same_bits(dbb, dba)) << "bf16 dy";
  EXPECT_THROW(ops::matmul_backward(ctx, {&dxb, nullptr, nullptr, dy16, x, W}), Error) << "bf16 dy outside bf16 mode";
  Tensor y32 = zeros({N, M});
  EXPECT_THROW(ops::matmul_forward(ctx, {y32, g16, W, Tensor()}), Error) << "bf16 x outside bf16 mode";
}

// The activations' bf16 outputs: swiglu's y is its f32 y rounded, and a bf16
// dx (gelu, swiglu) is written, not added to: the f32 gradient from zero,
// rounded, bit for bit, whatever the tensor held (NaN here).
TEST(Bf16Inputs, ActivationsWriteTheirRoundedGradient) {
  Ctx& ctx = host_ctx();
  Rng rng(0xb17);
  const int64_t N = 13, H = 10;
  const Tensor x2 = randn({N, 2 * H}, rng, 2.f), dy = randn({N, H}, rng);
  auto nan_bf16 = [&](Shape s) {
    Tensor t = Tensor::empty(std::move(s), DType::bf16, ctx);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<bf16_t>()[i].bits = 0x7fc0;  // NaN
    return t;
  };
  Tensor y = zeros({N, H}), y16 = nan_bf16({N, H});
  ops::swiglu_forward(ctx, {y, x2});
  ops::swiglu_forward(ctx, {y16, x2});
  EXPECT_TRUE(same_bits(y16.to(DType::f32), rounded(y))) << "swiglu y";
  Tensor dx = zeros({N, 2 * H}), dx16 = nan_bf16({N, 2 * H});
  ops::swiglu_backward(ctx, {dx, dy, x2});
  ops::swiglu_backward(ctx, {dx16, dy, x2});
  EXPECT_TRUE(same_bits(dx16.to(DType::f32), rounded(dx))) << "swiglu dx";
  const Tensor x = randn({N, H}, rng, 3.f);
  Tensor gx = zeros({N, H}), gx16 = nan_bf16({N, H});
  ops::gelu_backward(ctx, gx, dy, x);
  ops::gelu_backward(ctx, gx16, dy, x);
  EXPECT_TRUE(same_bits(gx16.to(DType::f32), rounded(gx))) << "gelu dx";
  Tensor bad = Tensor::empty({N, H}, DType::i32, ctx);
  EXPECT_THROW(ops::gelu_backward(ctx, bad, dy, x), Error) << "an i32 dx";
}

// dx_accumulate false: dx = dy W^T written over whatever it held (NaN), equal
// bit for bit to the accumulation into zeros, fp32 and bf16 mode, both W layouts.
TEST(Matmul, DxWrittenEqualsDxAccumulatedIntoZeros) {
  Ctx& ctx = host_ctx();
  Rng rng(0xd0);
  const int64_t N = 11, K = 7, M = 5;
  const Tensor x = randn({N, K}, rng), dy = randn({N, M}, rng);
  for (const bool transposed : {false, true})
    for (const bool bf16 : {false, true}) {
      const Tensor W = transposed ? randn({M, K}, rng) : randn({K, M}, rng), W16 = W.to(DType::bf16);
      Tensor acc = zeros({N, K}), written = zeros({N, K});
      for (int64_t i = 0; i < written.numel(); ++i) written.f32()[i] = std::numeric_limits<float>::quiet_NaN();
      ops::matmul_backward(ctx, {&acc, nullptr, nullptr, dy, x, W, transposed, bf16 ? &W16 : nullptr});
      ops::matmul_backward(ctx, {&written, nullptr, nullptr, dy, x, W, transposed, bf16 ? &W16 : nullptr, false});
      EXPECT_TRUE(same_bits(written, acc)) << "transposed " << transposed << ", bf16 " << bf16;
    }
}

TEST(Matmul, Bf16ShadowOfTheWrongShapeOrDtypeIsRefused) {
  Tensor x = zeros({2, 3}), W = zeros({3, 4}), y = zeros({2, 4});
  const Tensor wrong_shape = zeros({4, 3}).to(DType::bf16), f32 = zeros({3, 4});
  EXPECT_THROW(ops::matmul_forward(host_ctx(), {y, x, W, Tensor(), false, false, &wrong_shape}), ShapeError);
  EXPECT_THROW(ops::matmul_forward(host_ctx(), {y, x, W, Tensor(), false, false, &f32}), Error);
}

}  // namespace
}  // namespace sy
