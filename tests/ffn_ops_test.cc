// The FFN ops: ops/expert_ffn.h (bf16 mode, SwiGLU experts), ops/swiglu.h
// and ops/gelu.h, against hand-computed values and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "grad_check.h"
#include "ops/elementwise.h"
#include "ops/expert_ffn.h"
#include "ops/gelu.h"
#include "ops/matmul.h"
#include "ops/swiglu.h"

namespace sy {
namespace {

using testing::dot;
using testing::expect_gradient;
using testing::randn;
using testing::rel_diff;
using testing::same_bits;
using testing::zeros;

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

}  // namespace
}  // namespace sy
