// ops/attention.h (causal, sliding window, head subsets, bf16 on the CPU)
// and ops/heads.h against hand-computed cases, sparse attention over the
// same key sets and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "grad_check.h"
#include "ops/attention.h"
#include "ops/elementwise.h"
#include "ops/heads.h"
#include "ops/sparse_attention.h"

namespace sy {
namespace {

using testing::dot;
using testing::expect_gradient;
using testing::randn;
using testing::rounded;
using testing::zeros;

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

}  // namespace
}  // namespace sy
