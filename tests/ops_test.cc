// Every CPU op's backward against finite differences, plus hand-computed
// forward values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "grad_check.h"
#include "ops/adamw.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/finite.h"
#include "ops/gelu.h"
#include "ops/heads.h"
#include "ops/layernorm.h"
#include "ops/expert_ffn.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/sampling.h"
#include "ops/sparse_attention.h"
#include "ops/swiglu.h"

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

// A host copy of t with every element rounded to bf16 (round to nearest even).
Tensor rounded(const Tensor& t) { return t.to(DType::bf16).to(DType::f32); }

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

double rel_diff(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = static_cast<double>(a.f32()[i]) - b.f32()[i];
    num += d * d;
    den += static_cast<double>(b.f32()[i]) * b.f32()[i];
  }
  return std::sqrt(num / den);
}

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

// Elements [at, at + numel(s)) of a packed tensor, as shape s (an expert's block).
Tensor blk(const Tensor& t, int64_t at, const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return t.reshape({t.numel()}).rows(at, at + n).reshape(s);
}

// bf16 experts are, expert by expert, matmul's bf16 mode around the fp32
// activation, whose backward writes dpre in bf16 (as the dense Mlp does):
// compared with that composition (forward, pre, and every gradient), for
// GELU and SwiGLU experts of different widths.
TEST(ExpertFfn, Bf16ModeComposesBf16Matmuls) {
  Ctx& ctx = host_ctx();
  for (ops::FfnActivation act : {ops::FfnActivation::gelu, ops::FfnActivation::swiglu}) {
    const bool swiglu = act == ops::FfnActivation::swiglu;
    SCOPED_TRACE(swiglu ? "swiglu" : "gelu");
    Rng rng(0xbf2);
    const int64_t D = 8, R = 20;
    const std::vector<int64_t> hidden{6, 12, 3, 9};
    const std::vector<int32_t> offset{0, 5, 5, 12, 20};  // expert 1 gets no rows
    const ops::ExpertLayout l(D, hidden, act);
    Tensor buf = randn({R, D}, rng), w1 = randn({l.w1_numel()}, rng, 0.4f), b1 = randn({l.total_width()}, rng, 0.3f);
    Tensor w2 = randn({l.w2_numel()}, rng, 0.4f), b2 = randn({4 * D}, rng, 0.3f), dout = randn({R, D}, rng);
    const Tensor w1_16 = w1.to(DType::bf16), w2_16 = w2.to(DType::bf16);
    Tensor out = zeros({R, D}), pre = zeros({l.pre_numel(offset)});
    Tensor dbuf = zeros({R, D}), dw1 = zeros(w1.shape()), db1 = zeros(b1.shape()), dw2 = zeros(w2.shape()),
           db2 = zeros(b2.shape());
    const ops::ExpertWeights w{w1, b1, w2, b2, &w1_16, &w2_16};
    ops::expert_ffn_forward(ctx, {out, pre, buf, offset, l, w});
    ops::expert_ffn_backward(ctx, {dbuf, {dw1, db1, dw2, db2}, dout, buf, pre, offset, l, w});

    Tensor out_ref = zeros({R, D}), pre_ref = zeros(pre.shape()), dbuf_ref = zeros({R, D}), dw1_ref = zeros(w1.shape()),
           db1_ref = zeros(b1.shape()), dw2_ref = zeros(w2.shape()), db2_ref = zeros(b2.shape());
    int64_t p0 = 0;
    for (int64_t g = 0; g < 4; ++g) {
      const int64_t r0 = offset[g], n = offset[g + 1] - r0, H = hidden[g], P = l.width(g);
      if (n == 0) continue;
      const Tensor W1 = blk(w1, l.w1_offset(g), {D, P}), W1_16 = blk(w1_16, l.w1_offset(g), {D, P});
      const Tensor W2 = blk(w2, l.w2_offset(g), {H, D}), W2_16 = blk(w2_16, l.w2_offset(g), {H, D});
      Tensor p = blk(pre_ref, p0, {n, P}), a = zeros({n, H}), o = out_ref.rows(r0, r0 + n);
      p0 += n * P;
      ops::matmul_forward(ctx, {p, buf.rows(r0, r0 + n), W1, blk(b1, l.b1_offset(g), {P}), false, false, &W1_16});
      if (swiglu)
        ops::swiglu_forward(ctx, {a, p});
      else
        ops::gelu_forward(ctx, a, p);
      ops::matmul_forward(ctx, {o, a, W2, blk(b2, g * D, {D}), false, false, &W2_16});
      Tensor dact = zeros({n, H}), dpre = Tensor::empty({n, P}, DType::bf16, ctx), dW2 = blk(dw2_ref, l.w2_offset(g), {H, D}),
             dB2 = blk(db2_ref, g * D, {D}), dW1 = blk(dw1_ref, l.w1_offset(g), {D, P}),
             dB1 = blk(db1_ref, l.b1_offset(g), {P}), dx = dbuf_ref.rows(r0, r0 + n);
      ops::matmul_backward(ctx, {&dact, &dW2, &dB2, dout.rows(r0, r0 + n), a, W2, false, &W2_16});
      if (swiglu)
        ops::swiglu_backward(ctx, {dpre, dact, p});
      else
        ops::gelu_backward(ctx, dpre, dact, p);
      ops::matmul_backward(ctx, {&dx, &dW1, &dB1, dpre, buf.rows(r0, r0 + n), W1, false, &W1_16});
    }
    // The fused GELU derivative may differ from gelu_backward's in the last
    // bit; an unrounded operand would differ by ~1e-3.
    const std::pair<const char*, std::pair<Tensor*, Tensor*>> outs[] = {
        {"out", {&out, &out_ref}}, {"pre", {&pre, &pre_ref}}, {"dbuf", {&dbuf, &dbuf_ref}}, {"dw1", {&dw1, &dw1_ref}},
        {"db1", {&db1, &db1_ref}}, {"dw2", {&dw2, &dw2_ref}}, {"db2", {&db2, &db2_ref}}};
    for (const auto& [name, t] : outs) EXPECT_LT(rel_diff(*t.first, *t.second), 1e-6) << name;
  }
}

// With a bf16 pre (GELU in bf16 mode) the experts are matmul's GELU
// epilogue (ops/expert_ffn.h): per expert, fc1 with gelu out, fc2, and in
// backward fc2's dx with gelu_pre; dW2 from the act the forward kept.
TEST(ExpertFfn, Bf16PreIsMatmulsGeluEpilogue) {
  Ctx& ctx = host_ctx();
  Rng rng(0xe91);
  const int64_t D = 8, R = 20;
  const std::vector<int64_t> hidden{6, 12, 3, 9};
  const std::vector<int32_t> offset{0, 5, 5, 12, 20};
  const ops::ExpertLayout l(D, hidden);
  Tensor buf = randn({R, D}, rng), w1 = randn({l.w1_numel()}, rng, 0.4f), b1 = randn({l.total_width()}, rng, 0.3f);
  Tensor w2 = randn({l.w2_numel()}, rng, 0.4f), b2 = randn({4 * D}, rng, 0.3f), dout = randn({R, D}, rng);
  const Tensor w1_16 = w1.to(DType::bf16), w2_16 = w2.to(DType::bf16);
  Tensor out = zeros({R, D}), pre = Tensor::empty({l.pre_numel(offset)}, DType::bf16, ctx), act16;
  Tensor dbuf = zeros({R, D}), dw1 = zeros(w1.shape()), db1 = zeros(b1.shape()), dw2 = zeros(w2.shape()),
         db2 = zeros(b2.shape());
  const ops::ExpertWeights w{w1, b1, w2, b2, &w1_16, &w2_16};
  ops::expert_ffn_forward(ctx, {out, pre, buf, offset, l, w, nullptr, &act16});
  ops::ExpertFfnBackwardArgs back{dbuf, {dw1, db1, dw2, db2}, dout, buf, pre, offset, l, w, &act16};
  ops::expert_ffn_backward(ctx, back);

  Tensor out_ref = zeros({R, D}), dbuf_ref = zeros({R, D}), dw1_ref = zeros(w1.shape()), db1_ref = zeros(b1.shape()),
         dw2_ref = zeros(w2.shape()), db2_ref = zeros(b2.shape());
  int64_t p0 = 0;
  for (int64_t g = 0; g < 4; ++g) {
    const int64_t r0 = offset[g], n = offset[g + 1] - r0, H = hidden[g];
    if (n == 0) continue;
    const Tensor W1 = blk(w1, l.w1_offset(g), {D, H}), W1_16 = blk(w1_16, l.w1_offset(g), {D, H});
    const Tensor W2 = blk(w2, l.w2_offset(g), {H, D}), W2_16 = blk(w2_16, l.w2_offset(g), {H, D});
    Tensor p = Tensor::empty({n, H}, DType::bf16, ctx), a = Tensor::empty({n, H}, DType::bf16, ctx);
    Tensor o = out_ref.rows(r0, r0 + n);
    ops::MatmulArgs up{p, buf.rows(r0, r0 + n), W1, blk(b1, l.b1_offset(g), {H}), false, false, &W1_16};
    up.gelu = &a;
    ops::matmul_forward(ctx, up);
    EXPECT_TRUE(same_bits(p.to(DType::f32), blk(pre, p0, {n, H}).to(DType::f32))) << "pre, expert " << g;
    EXPECT_TRUE(same_bits(a.to(DType::f32), blk(act16, p0, {n, H}).to(DType::f32))) << "act, expert " << g;
    p0 += n * H;
    ops::matmul_forward(ctx, {o, a, W2, blk(b2, g * D, {D}), false, false, &W2_16});
    Tensor dpre = Tensor::empty({n, H}, DType::bf16, ctx), dW2 = blk(dw2_ref, l.w2_offset(g), {H, D}),
           dB2 = blk(db2_ref, g * D, {D}), dW1 = blk(dw1_ref, l.w1_offset(g), {D, H}),
           dB1 = blk(db1_ref, l.b1_offset(g), {H}), dx = dbuf_ref.rows(r0, r0 + n);
    ops::MatmulBackwardArgs down{&dpre, &dW2, &dB2, dout.rows(r0, r0 + n), a, W2, false, &W2_16};
    down.dx_accumulate = false, down.gelu_pre = &p;
    ops::matmul_backward(ctx, down);
    ops::matmul_backward(ctx, {&dx, &dW1, &dB1, dpre, buf.rows(r0, r0 + n), W1, false, &W1_16});
  }
  // (the expert's fused GELU derivative may differ from gelu_backward's in
  // the last bit, and then its dpre by a bf16 step, rarely)
  const std::pair<const char*, std::pair<Tensor*, Tensor*>> outs[] = {
      {"out", {&out, &out_ref}}, {"dbuf", {&dbuf, &dbuf_ref}}, {"dw1", {&dw1, &dw1_ref}},
      {"db1", {&db1, &db1_ref}}, {"dw2", {&dw2, &dw2_ref}}, {"db2", {&db2, &db2_ref}}};
  for (const auto& [name, t] : outs) EXPECT_LT(rel_diff(*t.first, *t.second), 1e-6) << name;
}

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

TEST(Swiglu, HandComputedAndGradient) {
  Ctx& ctx = host_ctx();
  // One row, H = 2: gate (0, 1), up (3, -2): y = (silu(0) * 3, silu(1) * -2).
  Tensor x = zeros({1, 4}), y = zeros({1, 2});
  const float v[] = {0, 1, 3, -2};
  std::copy(v, v + 4, x.f32());
  ops::swiglu_forward(ctx, {y, x});
  EXPECT_NEAR(y.f32()[0], 0.f, 1e-7);
  EXPECT_NEAR(y.f32()[1], -2 * 0.7310586f, 1e-6);  // silu(1) = 1 / (1 + e^-1)
  Rng rng(25);
  const int64_t N = 6, H = 7;
  Tensor xs = randn({N, 2 * H}, rng, 2.f), R = randn({N, H}, rng);
  auto loss = [&] {
    Tensor ys = zeros({N, H});
    ops::swiglu_forward(ctx, {ys, xs});
    return dot(ys, R);
  };
  Tensor dx = zeros({N, 2 * H});
  ops::swiglu_backward(ctx, {dx, R, xs});
  expect_gradient("dx", xs, dx, loss, 1e-3, 2e-2, 84);
}

// SwiGLU experts, with and without biases: by hand for one row, and every
// gradient against finite differences.
TEST(ExpertFfn, SwigluHandComputedAndGradients) {
  Ctx& ctx = host_ctx();
  for (bool bias : {true, false}) {
    SCOPED_TRACE(bias ? "biases" : "no biases");
    Rng rng(26);
    const int64_t G = 3, D = 4, H = 5, R = 7;
    const std::vector<int32_t> offset = {0, 2, 2, 7};  // expert 1 gets no rows
    Tensor buf = randn({R, D}, rng), w1 = randn({G, D, 2 * H}, rng, 0.5f), w2 = randn({G, H, D}, rng, 0.5f);
    Tensor b1 = bias ? randn({G, 2 * H}, rng, 0.3f) : Tensor(), b2 = bias ? randn({G, D}, rng, 0.3f) : Tensor();
    Tensor Rr = randn({R, D}, rng);
    const ops::ExpertLayout layout(D, {H, H, H}, ops::FfnActivation::swiglu);
    auto run = [&](Tensor& out, Tensor& pre) {
      ops::expert_ffn_forward(ctx, {out, pre, buf, offset, layout, {w1, b1, w2, b2}});
    };
    Tensor out = zeros({R, D}), pre = zeros({R, 2 * H});
    run(out, pre);
    // Row 3 goes through expert 2: silu(x Wg + bg) * (x Wu + bu) W2 + b2.
    const float* x = buf.f32() + 3 * D;
    for (int64_t d = 0; d < D; ++d) {
      double want = bias ? b2.f32()[2 * D + d] : 0.0;
      for (int64_t j = 0; j < H; ++j) {
        double g = bias ? b1.f32()[2 * 2 * H + j] : 0.0, u = bias ? b1.f32()[2 * 2 * H + H + j] : 0.0;
        for (int64_t c = 0; c < D; ++c) {
          g += x[c] * w1.f32()[(2 * D + c) * 2 * H + j];
          u += x[c] * w1.f32()[(2 * D + c) * 2 * H + H + j];
        }
        want += g / (1 + std::exp(-g)) * u * w2.f32()[(2 * H + j) * D + d];
      }
      EXPECT_NEAR(out.f32()[3 * D + d], want, 1e-5) << d;
    }
    auto loss = [&] {
      Tensor o = zeros({R, D}), p = zeros({R, 2 * H});
      run(o, p);
      return dot(o, Rr);
    };
    Tensor dbuf = zeros({R, D}), dw1 = zeros({G, D, 2 * H}), dw2 = zeros({G, H, D});
    Tensor db1 = bias ? zeros({G, 2 * H}) : Tensor(), db2 = bias ? zeros({G, D}) : Tensor();
    ops::expert_ffn_backward(ctx, {dbuf, {dw1, db1, dw2, db2}, Rr, buf, pre, offset, layout, {w1, b1, w2, b2}});
    expect_gradient("dbuf", buf, dbuf, loss, 1e-3, 2e-2, 28);
    expect_gradient("dw1", w1, dw1, loss, 1e-3, 2e-2, 120);
    expect_gradient("dw2", w2, dw2, loss, 1e-3, 2e-2, 60);
    if (bias) {
      expect_gradient("db1", b1, db1, loss, 1e-3, 2e-2, 30);
      expect_gradient("db2", b2, db2, loss, 1e-3);
    }
  }
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

TEST(Attention, SingleTokenReturnsItsValue) {
  Rng rng(5);
  ops::AttentionShape s{2, 1, 8, 2};
  Tensor qkv = randn({2, 1, 24}, rng), out = zeros({2, 1, 8}), lse = zeros({2, 2, 1});
  ops::attention_forward(host_ctx(), {out, lse, qkv, s});
  for (int b = 0; b < 2; ++b)
    for (int c = 0; c < 8; ++c) EXPECT_FLOAT_EQ(out.f32()[b * 8 + c], qkv.f32()[b * 24 + 16 + c]);
  // One key: lse is its score q.k / sqrt(D).
  for (int b = 0; b < 2; ++b)
    for (int h = 0; h < 2; ++h) {
      float d = 0;
      for (int i = 0; i < 4; ++i) d += qkv.f32()[b * 24 + h * 4 + i] * qkv.f32()[b * 24 + 8 + h * 4 + i];
      EXPECT_NEAR(lse.f32()[b * 2 + h], d / 2.f, 1e-6f);
    }
}

TEST(Attention, CausalNoLeakFromFuture) {
  Ctx& ctx = host_ctx();
  Rng rng(6);
  ops::AttentionShape s{1, 7, 8, 2};
  Tensor qkv = randn({1, 7, 24}, rng), out = zeros({1, 7, 8}), out2 = zeros({1, 7, 8}), lse = zeros({1, 2, 7});
  ops::attention_forward(ctx, {out, lse, qkv, s});
  for (int c = 0; c < 24; ++c) qkv.f32()[5 * 24 + c] += 3.f;  // change token 5
  ops::attention_forward(ctx, {out2, lse, qkv, s});
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
    Tensor out = zeros({2, 5, 6}), lse = zeros({2, 3, 5});
    ops::attention_forward(ctx, {out, lse, qkv, s});
    return dot(out, R);
  };
  Tensor out = zeros({2, 5, 6}), lse = zeros({2, 3, 5}), dqkv = zeros({2, 5, 18});
  ops::attention_forward(ctx, {out, lse, qkv, s});
  ops::attention_backward(ctx, {dqkv, R, qkv, out, lse, s});
  expect_gradient("dqkv", qkv, dqkv, loss, 1e-3, 2e-2, 90);
}

// ---- sliding window and head subsets (ops/attention.h) ----

// Head h of sequence b of a packed (B, T, 3C) qkv: its q, k or v (part 0, 1,
// 2) as a contiguous (T, D) tensor, and back.
Tensor head_part(const Tensor& qkv, const ops::AttentionShape& s, int64_t b, int64_t h, int part, int64_t width) {
  const int64_t D = s.C / s.H;
  Tensor t = zeros({s.T, D});
  for (int64_t i = 0; i < s.T; ++i)
    for (int64_t d = 0; d < D; ++d) t.f32()[i * D + d] = qkv.f32()[(b * s.T + i) * width + part * s.C + h * D + d];
  return t;
}

// The windowed attention against the sparse attention over local_keysets (a
// separate path with its own finite-difference tests): out, lse and dqkv of
// every head, the windows shorter than a row block of 32, not multiples of 8,
// one key, and as long as the sequence and longer.
TEST(Attention, WindowEqualsSparseAttentionOverLocalKeySets) {
  Ctx& ctx = host_ctx();
  for (const int64_t w : {1, 7, 33, 40, 100, 150}) {
    SCOPED_TRACE("window " + std::to_string(w));
    Rng rng(70 + w);
    ops::AttentionShape s{2, 100, 32, 2};
    s.window = w;
    const int64_t D = s.C / s.H;
    Tensor qkv = randn({s.B, s.T, 3 * s.C}, rng), dout = randn({s.B, s.T, s.C}, rng);
    Tensor out = zeros({s.B, s.T, s.C}), lse = zeros({s.B, s.H, s.T}), dqkv = zeros({s.B, s.T, 3 * s.C});
    ops::attention_forward(ctx, {out, lse, qkv, s});
    ops::attention_backward(ctx, {dqkv, dout, qkv, out, lse, s});
    const ops::KeySets ks = ops::local_keysets(ctx, s.T, w);
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.H; ++h) {
        const Tensor q = head_part(qkv, s, b, h, 0, 3 * s.C), k = head_part(qkv, s, b, h, 1, 3 * s.C),
                     v = head_part(qkv, s, b, h, 2, 3 * s.C);
        const Tensor g = head_part(dout, s, b, h, 0, s.C);
        Tensor o = zeros({s.T, D}), l = zeros({s.T}), dq = zeros({s.T, D}), dk = zeros({s.T, D}), dv = zeros({s.T, D});
        ops::sparse_attention_forward(ctx, {o, l, q, k, v, ks});
        ops::sparse_attention_backward(ctx, {dq, dk, dv, g, o, l, q, k, v, ks});
        const Tensor want[] = {o, dq, dk, dv};
        const Tensor got[] = {head_part(out, s, b, h, 0, s.C), head_part(dqkv, s, b, h, 0, 3 * s.C),
                              head_part(dqkv, s, b, h, 1, 3 * s.C), head_part(dqkv, s, b, h, 2, 3 * s.C)};
        for (int i = 0; i < 4; ++i)
          for (int64_t e = 0; e < s.T * D; ++e)
            ASSERT_NEAR(got[i].f32()[e], want[i].f32()[e], 2e-5f * (1.f + std::fabs(want[i].f32()[e])))
                << "output " << i << " (o, dq, dk, dv) of b " << b << " h " << h << " element " << e;
        for (int64_t t = 0; t < s.T; ++t)
          ASSERT_NEAR(lse.f32()[(b * s.H + h) * s.T + t], l.f32()[t], 2e-5f * (1.f + std::fabs(l.f32()[t])));
      }
  }
}

// A window as long as the sequence is the causal mask, to the bit (the same
// loops run: c0 = 0 and every row's keys start at 0).
TEST(Attention, WindowAsLongAsTheSequenceIsCausalBitwise) {
  Ctx& ctx = host_ctx();
  Rng rng(71);
  ops::AttentionShape s{1, 70, 16, 2}, w = s;
  w.window = 70;
  Tensor qkv = randn({1, 70, 48}, rng), dout = randn({1, 70, 16}, rng);
  Tensor o1 = zeros({1, 70, 16}), o2 = zeros({1, 70, 16}), l1 = zeros({1, 2, 70}), l2 = zeros({1, 2, 70});
  Tensor d1 = zeros({1, 70, 48}), d2 = zeros({1, 70, 48});
  ops::attention_forward(ctx, {o1, l1, qkv, s});
  ops::attention_backward(ctx, {d1, dout, qkv, o1, l1, s});
  ops::attention_forward(ctx, {o2, l2, qkv, w});
  ops::attention_backward(ctx, {d2, dout, qkv, o2, l2, w});
  EXPECT_EQ(std::memcmp(o1.f32(), o2.f32(), o1.numel() * 4), 0);
  EXPECT_EQ(std::memcmp(l1.f32(), l2.f32(), l1.numel() * 4), 0);
  EXPECT_EQ(std::memcmp(d1.f32(), d2.f32(), d1.numel() * 4), 0);
}

TEST(Attention, WindowGradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(72);
  ops::AttentionShape s{2, 7, 6, 3};
  s.window = 2;
  Tensor qkv = randn({2, 7, 18}, rng), R = randn({2, 7, 6}, rng);
  auto loss = [&] {
    Tensor out = zeros({2, 7, 6}), lse = zeros({2, 3, 7});
    ops::attention_forward(ctx, {out, lse, qkv, s});
    return dot(out, R);
  };
  Tensor out = zeros({2, 7, 6}), lse = zeros({2, 3, 7}), dqkv = zeros({2, 7, 18});
  ops::attention_forward(ctx, {out, lse, qkv, s});
  ops::attention_backward(ctx, {dqkv, R, qkv, out, lse, s});
  expect_gradient("dqkv", qkv, dqkv, loss, 1e-3, 2e-2, 126);
}

// Grouped-query attention's widening, on exact values: 4 query heads share 2
// key/value heads (D 1): q as it is, k and v each repeated for its 2 query
// heads; the reduction sums each pair.
TEST(KvHeads, ExpandAndReduceByHand) {
  Ctx& ctx = host_ctx();
  const ops::KvHeads s{4, 2, 1};
  Tensor g = Tensor::from_host(std::vector<float>{1, 2, 3, 4, 10, 20, 100, 200}).reshape({1, 8}), w = zeros({1, 12});
  ops::expand_kv_heads(ctx, w, g, s);
  EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{1, 2, 3, 4, 10, 10, 20, 20, 100, 100, 200, 200}));
  Tensor wide = Tensor::from_host(std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}).reshape({1, 12});
  Tensor r = zeros({1, 8});
  ops::reduce_kv_heads(ctx, r, wide, s);
  EXPECT_EQ(r.to_vector<float>(), (std::vector<float>{1, 2, 3, 4, 5 + 6, 7 + 8, 9 + 10, 11 + 12}));
  // bf16: the same values (exact in bf16), the sums rounded once.
  Tensor g16 = g.to(DType::bf16), w16 = Tensor::zeros({1, 12}, DType::bf16, ctx);
  ops::expand_kv_heads(ctx, w16, g16, s);
  EXPECT_EQ(w16.to(DType::f32).to_vector<float>(), w.to_vector<float>());
  Tensor r16 = Tensor::zeros({1, 8}, DType::bf16, ctx);
  ops::reduce_kv_heads(ctx, r16, wide.to(DType::bf16), s);
  EXPECT_EQ(r16.to(DType::f32).to_vector<float>(), r.to_vector<float>());
  Tensor bad = zeros({1, 9});
  EXPECT_THROW(ops::expand_kv_heads(ctx, w, bad, s), Error);
  EXPECT_THROW(ops::expand_kv_heads(ctx, w, g, {4, 3, 1}), Error);
}

// reduce is expand's adjoint (its backward): <expand(x), y> = <x, reduce(y)>,
// with D 3, 6 query heads over 2, 3 and 6 key/value heads.
TEST(KvHeads, ReduceIsTheBackwardOfExpand) {
  Ctx& ctx = host_ctx();
  Rng rng(5);
  for (int64_t G : {2, 3, 6}) {
    const ops::KvHeads s{6, G, 3};
    Tensor x = randn({5, (6 + 2 * G) * 3}, rng), y = randn({5, 54}, rng);
    Tensor ex = zeros({5, 54}), ry = zeros({5, (6 + 2 * G) * 3});
    ops::expand_kv_heads(ctx, ex, x, s);
    ops::reduce_kv_heads(ctx, ry, y, s);
    EXPECT_NEAR(dot(ex, y), dot(x, ry), 1e-4 * (1 + std::abs(dot(ex, y)))) << "G " << G;
  }
}

// heads = 1 of 2: head 0 as in the full run, bit for bit; head 1's columns of
// out and dqkv and its lse rows keep what was there.
TEST(Attention, HeadSubsetLeavesTheOtherHeadsAlone) {
  Ctx& ctx = host_ctx();
  Rng rng(73);
  ops::AttentionShape all{2, 40, 16, 2}, first = all;
  all.window = first.window = 9;
  first.heads = 1;
  Tensor qkv = randn({2, 40, 48}, rng), dout = randn({2, 40, 16}, rng);
  Tensor o1 = zeros({2, 40, 16}), l1 = zeros({2, 2, 40}), d1 = zeros({2, 40, 48});
  ops::attention_forward(ctx, {o1, l1, qkv, all});
  ops::attention_backward(ctx, {d1, dout, qkv, o1, l1, all});
  Tensor o2 = zeros({2, 40, 16}), l2 = zeros({2, 2, 40}), d2 = zeros({2, 40, 48});
  for (Tensor* t : {&o2, &l2, &d2})
    for (int64_t e = 0; e < t->numel(); ++e) t->f32()[e] = 7.f;
  ops::attention_forward(ctx, {o2, l2, qkv, first});
  for (int64_t e = 0; e < d2.numel(); ++e) d2.f32()[e] = 0.f;
  for (int64_t r = 0; r < 80; ++r)
    for (int p = 0; p < 3; ++p)
      for (int64_t d = 0; d < 8; ++d) d2.f32()[r * 48 + p * 16 + 8 + d] = 7.f;
  ops::attention_backward(ctx, {d2, dout, qkv, o2, l2, first});
  for (int64_t r = 0; r < 80; ++r)
    for (int64_t d = 0; d < 8; ++d) {
      EXPECT_EQ(o2.f32()[r * 16 + d], o1.f32()[r * 16 + d]) << "head 0, row " << r;
      EXPECT_EQ(o2.f32()[r * 16 + 8 + d], 7.f) << "head 1 written, row " << r;
      for (int p = 0; p < 3; ++p) {
        EXPECT_EQ(d2.f32()[r * 48 + p * 16 + d], d1.f32()[r * 48 + p * 16 + d]) << "head 0 grad, row " << r;
        EXPECT_EQ(d2.f32()[r * 48 + p * 16 + 8 + d], 7.f) << "head 1 grad written, row " << r;
      }
    }
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 40; ++t) {
      EXPECT_EQ(l2.f32()[(b * 2) * 40 + t], l1.f32()[(b * 2) * 40 + t]);
      EXPECT_EQ(l2.f32()[(b * 2 + 1) * 40 + t], 7.f);
    }
}

// bf16 tensors on the CPU: the f32 path on the bf16 values, results rounded
// to bf16, bit for bit (the emulation the CUDA tensor-core kernels are held
// to, class B); with a window and a head subset, the other head's columns of
// out and dqkv keep their bf16 values.
TEST(Attention, Bf16OnTheCpuIsTheF32PathOnTheRoundedValues) {
  Ctx& ctx = host_ctx();
  for (const int64_t heads : {0, 1}) {
    Rng rng(74 + heads);
    ops::AttentionShape s{2, 50, 128, 2};
    s.window = heads > 0 ? 20 : 0, s.heads = heads;
    const Tensor qkv16 = randn({2, 50, 384}, rng).to(DType::bf16), dout16 = randn({2, 50, 128}, rng).to(DType::bf16);
    const Tensor start_o = randn({2, 50, 128}, rng).to(DType::bf16), start_d = randn({2, 50, 384}, rng).to(DType::bf16);
    Tensor o16 = start_o.to(DType::f32).to(DType::bf16), d16 = start_d.to(DType::f32).to(DType::bf16);
    Tensor l16 = zeros({2, 2, 50}), l32 = zeros({2, 2, 50});
    ops::attention_forward(ctx, {o16, l16, qkv16, s});
    ops::attention_backward(ctx, {d16, dout16, qkv16, o16, l16, s});
    const Tensor qkv = qkv16.to(DType::f32), dout = dout16.to(DType::f32);
    Tensor o = start_o.to(DType::f32), d = start_d.to(DType::f32);
    ops::attention_forward(ctx, {o, l32, qkv, s});
    const Tensor o_rounded = o.to(DType::bf16);
    const Tensor o_back = o_rounded.to(DType::f32);  // backward reads the forward's bf16 output
    ops::attention_backward(ctx, {d, dout, qkv, o_back, l32, s});
    const Tensor d_rounded = d.to(DType::bf16);
    EXPECT_EQ(std::memcmp(o16.raw(), o_rounded.raw(), o16.nbytes()), 0) << "out, heads " << heads;
    EXPECT_EQ(std::memcmp(l16.raw(), l32.raw(), l16.nbytes()), 0) << "lse, heads " << heads;
    EXPECT_EQ(std::memcmp(d16.raw(), d_rounded.raw(), d16.nbytes()), 0) << "dqkv, heads " << heads;
    if (heads > 0)  // head 1's columns of out kept their starting values
      for (int64_t r = 0; r < 100; ++r)
        EXPECT_EQ(o16.data<bf16_t>()[r * 128 + 64].bits, start_o.data<bf16_t>()[r * 128 + 64].bits) << "row " << r;
  }
}

TEST(Attention, RefusesANegativeWindowAndTooManyHeads) {
  Ctx& ctx = host_ctx();
  ops::AttentionShape s{1, 4, 8, 2};
  Tensor qkv = zeros({1, 4, 24}), out = zeros({1, 4, 8}), lse = zeros({1, 2, 4});
  s.window = -1;
  EXPECT_THROW(ops::attention_forward(ctx, {out, lse, qkv, s}), Error);
  s.window = 0, s.heads = 3;
  EXPECT_THROW(ops::attention_forward(ctx, {out, lse, qkv, s}), Error);
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
