// Backend op tests of the GEMMs and expert FFNs beyond the op cases: bf16
// rounding reuse, written gradients, cuBLASLt's epilogues and plans
// (tests/backend_ops_test.cc).
#include <tuple>

#include "tests/backend_ops/harness.h"

namespace sy::op_test {

// bf16 mode: the forward hands back bf16(x) and backward takes it as x (what
// Linear keeps): y, dx, dW, db bit for bit those of rounding x again in
// backward, on each backend; x_bf16 is bf16(x) exactly. Plain and transposed
// W, an odd shape and one large enough for the tensor-core tiles.
TEST_P(BackendOps, MatmulBf16BackwardReusesTheForwardsRounding) {
  Ctx& x = ctx();
  for (const auto& [N, K, M] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{37, 24, 19}, {300, 256, 384}})
    for (const bool tw : {false, true}) {
      SCOPED_TRACE(std::to_string(N) + "x" + std::to_string(K) + "x" + std::to_string(M) + (tw ? " W^T" : ""));
      Rng rng(0x16 + N);
      const Tensor xin = randn({N, K}, rng).to(x), w = randn(tw ? Shape{M, K} : Shape{K, M}, rng).to(x),
                   b = randn({M}, rng).to(x), dy = randn({N, M}, rng).to(x);
      Tensor w16 = out(x, w.shape(), DType::bf16);
      ops::to_bf16(x, w16, w);
      std::vector<Tensor> res[2];
      Tensor x16;
      for (int reuse = 0; reuse < 2; ++reuse) {
        Tensor y = out(x, {N, M}), dx = Tensor::zeros({N, K}, DType::f32, x), dw = Tensor::zeros(w.shape(), DType::f32, x),
               db = Tensor::zeros({M}, DType::f32, x);
        ops::matmul_forward(x, {y, xin, w, b, false, tw, &w16, reuse ? &x16 : nullptr});
        ops::matmul_backward(x, {&dx, &dw, &db, dy, reuse ? x16 : xin, w, tw, &w16});
        res[reuse] = {y.to(host_ctx()), dx.to(host_ctx()), dw.to(host_ctx()), db.to(host_ctx())};
      }
      ASSERT_EQ(x16.dtype(), DType::bf16);
      EXPECT_TRUE(bitwise_equal(x16.to(host_ctx()), xin.to(host_ctx()).to(DType::bf16))) << "x_bf16 is not bf16(x)";
      for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(bitwise_equal(res[0][i], res[1][i])) << "output " << i;
    }
}

// bf16 outputs of the bf16-mode GEMMs (what the attention block's qkv and
// proj write for the bf16 kernels, runtime/layers.cc): y = bf16(x W + b) and
// dx = bf16(dy W^T), on poisoned outputs, against the f32 outputs rounded.
// The CPU rounds its f32 result: bit for bit. cuBLASLt writes bf16 itself,
// perhaps by another algorithm than the f32 output's (another order of the
// fp32 sums): within one bf16 step of it, and every element written. Twice,
// bit for bit. With a bias (rounded to bf16 first, then added in fp32
// before the one rounding: the f32 reference adds that rounded bias), a
// misaligned one (a view one element in: the rounded copy is aligned) and
// none; W plain and transposed.
TEST_P(BackendOps, MatmulBf16OutputsAreTheF32OutputsRounded) {
  Ctx& x = ctx();
  const bool cpu = GetParam() == DeviceKind::cpu;
  for (const auto& [N, K, M] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{37, 24, 19}, {256, 192, 384}})
    for (const bool tw : {false, true})
      for (const int bias : {0, 1, 2}) {  // none, aligned, a view one element in (its rounded copy is aligned)
        SCOPED_TRACE(std::to_string(N) + "x" + std::to_string(K) + "x" + std::to_string(M) + (tw ? " W^T" : "") +
                     (bias ? bias == 1 ? " bias" : " offset bias" : ""));
        Rng rng(0xb16 + N + tw);
        const Tensor xin = randn({N, K}, rng).to(x), w = randn(tw ? Shape{M, K} : Shape{K, M}, rng).to(x),
                     b = bias == 0 ? Tensor() : randn({M + bias - 1}, rng, 4.f).to(x).rows(bias - 1, M + bias - 1),
                     dy = randn({N, M}, rng).to(x);
        Tensor w16 = out(x, w.shape(), DType::bf16);
        ops::to_bf16(x, w16, w);
        Tensor y32 = out(x, {N, M}), dx32 = out(x, {N, K}), want_y = out(x, {N, M}, DType::bf16),
               want_dx = out(x, {N, K}, DType::bf16);
        // The f32 output's bias rounded to bf16 first, as a bf16 output adds it (ops/matmul.h).
        const Tensor b_rounded = bias == 0 ? Tensor() : b.to(host_ctx()).to(DType::bf16).to(DType::f32).to(x);
        ops::matmul_forward(x, {y32, xin, w, b_rounded, false, tw, &w16});
        ops::matmul_backward(x, {&dx32, nullptr, nullptr, dy, xin, w, tw, &w16, false});
        ops::to_bf16(x, want_y, y32);
        ops::to_bf16(x, want_dx, dx32);
        std::vector<Tensor> runs[2];
        for (auto& r : runs) {
          Tensor y16 = out(x, {N, M}, DType::bf16), dx16 = out(x, {N, K}, DType::bf16);
          poison(y16, x);
          poison(dx16, x);
          ops::matmul_forward(x, {y16, xin, w, b, false, tw, &w16});
          ops::matmul_backward(x, {&dx16, nullptr, nullptr, dy, xin, w, tw, &w16, false});
          r = {y16.to(host_ctx()), dx16.to(host_ctx())};
        }
        const Tensor want[2] = {want_y.to(host_ctx()), want_dx.to(host_ctx())};
        for (int i = 0; i < 2; ++i) {
          const char* name = i == 0 ? "y" : "dx";
          EXPECT_TRUE(bitwise_equal(runs[0][i], runs[1][i])) << name << " differs between two runs";
          if (cpu) {
            EXPECT_TRUE(bitwise_equal(runs[0][i], want[i])) << name << " is not the f32 result rounded";
            continue;
          }
          const Tensor got = runs[0][i].to(DType::f32), ref = want[i].to(DType::f32);
          int64_t bad = 0;
          for (int64_t j = 0; j < got.numel(); ++j) {
            const float g = got.f32()[j], r = ref.f32()[j];
            // One bf16 step of r (2^-7 relative at most), or a sum near zero.
            bad += !(std::fabs(g - r) <= 0x1p-7f * std::fabs(r) + 1e-4f);
          }
          EXPECT_EQ(bad, 0) << name << ": elements more than one bf16 step from the f32 result rounded (or unwritten)";
        }
      }
}

// dbuf written (dbuf_accumulate false, what GroupedExperts asks) into a
// poisoned buffer against dbuf accumulated onto zeros: every row written (each
// belongs to one expert), the same values; the CPU bit for bit, CUDA (beta 0
// may pick another cuBLASLt algorithm than beta 1) to 1e-5 relative L2.
// Equal experts (one strided batch) and packed ones with an empty expert,
// f32 and bf16 mode.
TEST_P(BackendOps, ExpertFfnBackwardWritesDbuf) {
  Ctx& x = ctx();
  const bool cpu = GetParam() == DeviceKind::cpu;
  for (const bool equal : {true, false})
    for (const bool bf16 : {false, true}) {
      SCOPED_TRACE(std::string(equal ? "equal experts" : "packed") + (bf16 ? ", bf16" : ", f32"));
      const std::vector<int32_t> offset = equal ? std::vector<int32_t>{0, 6, 12, 18, 24} : std::vector<int32_t>{0, 5, 5, 12, 20};
      const ops::ExpertLayout layout(16, equal ? std::vector<int64_t>{12, 12, 12, 12} : std::vector<int64_t>{6, 12, 3, 9},
                                     ops::FfnActivation::gelu);
      const int64_t R = offset.back(), P = layout.total_width(), S = layout.total_hidden();
      Rng rng(0xdb + R + bf16);
      const Tensor buf = randn({R, 16}, rng).to(x), w1 = randn({16 * P}, rng, 0.3f).to(x),
                   w2 = randn({S * 16}, rng, 0.3f).to(x), b1 = randn({P}, rng).to(x), b2 = randn({4, 16}, rng).to(x),
                   dout = randn({R, 16}, rng).to(x);
      Tensor w1_16 = out(x, w1.shape(), DType::bf16), w2_16 = out(x, w2.shape(), DType::bf16);
      ops::to_bf16(x, w1_16, w1);
      ops::to_bf16(x, w2_16, w2);
      const ops::ExpertWeights w{w1, b1, w2, b2, bf16 ? &w1_16 : nullptr, bf16 ? &w2_16 : nullptr};
      Tensor pre = out(x, {layout.pre_numel(offset)}), o = out(x, {R, 16});
      ops::expert_ffn_forward(x, {o, pre, buf, offset, layout, w});
      Tensor got[2];
      for (int written = 0; written < 2; ++written) {
        Tensor dbuf = written ? out(x, {R, 16}) : Tensor::zeros({R, 16}, DType::f32, x);
        if (written) poison(dbuf, x);
        Tensor dw1 = Tensor::zeros(w1.shape(), DType::f32, x), dw2 = Tensor::zeros(w2.shape(), DType::f32, x),
               db1 = Tensor::zeros(b1.shape(), DType::f32, x), db2 = Tensor::zeros(b2.shape(), DType::f32, x);
        ops::expert_ffn_backward(x, {dbuf, {dw1, db1, dw2, db2}, dout, buf, pre, offset, layout, w, nullptr,
                                     /*dbuf_accumulate=*/written == 0});
        got[written] = dbuf.to(host_ctx());
      }
      if (cpu) {
        EXPECT_TRUE(bitwise_equal(got[0], got[1])) << "written dbuf differs from dbuf accumulated onto zeros";
      } else {
        EXPECT_LE(rel_l2(got[1], got[0]), 1e-5) << "written dbuf against dbuf accumulated onto zeros";
      }
    }
}

// grads_accumulate false (the step's first backward after ParamStore::zero_grad,
// which leaves expert gradients unwritten): every weight and bias gradient is
// written into NaN-poisoned tensors, equal to the gradients accumulated onto
// zeros (bit for bit on the CPU; the same products on CUDA, where the GEMMs'
// beta 0 may take another cuBLASLt algorithm: class F). Every CUDA path:
// equal rows (strided-batched), packed rows of one width (a dropless route:
// the bias sums over all experts at once), packed widths; an expert without
// rows (offsets 5, 5 or 7, 7: its blocks exactly zero) and no rows at all;
// GELU with biases and SwiGLU without.
TEST_P(BackendOps, ExpertFfnBackwardWritesItsGradients) {
  Ctx& x = ctx();
  const bool cpu = GetParam() == DeviceKind::cpu;
  struct Case {
    const char* name;
    std::vector<int32_t> offset;
    std::vector<int64_t> hidden;
    ops::FfnActivation act;
    bool bias;
    int64_t empty;  // an expert without rows, or -1
  };
  const std::vector<Case> cases = {
      {"equal rows", {0, 6, 12, 18, 24}, {12, 12, 12, 12}, ops::FfnActivation::gelu, true, -1},
      {"packed, one width", {0, 7, 7, 15, 20}, {12, 12, 12, 12}, ops::FfnActivation::gelu, true, 1},
      {"packed, one width, swiglu, no bias", {0, 7, 7, 15, 20}, {12, 12, 12, 12}, ops::FfnActivation::swiglu, false, 1},
      {"packed widths", {0, 5, 5, 12, 20}, {6, 12, 3, 9}, ops::FfnActivation::gelu, true, 1},
      {"packed widths, swiglu, no bias", {0, 5, 5, 12, 20}, {6, 12, 3, 9}, ops::FfnActivation::swiglu, false, 1},
      {"no rows", {0, 0, 0, 0, 0}, {12, 12, 12, 12}, ops::FfnActivation::gelu, true, -1},
  };
  for (const Case& c : cases)
    for (const bool bf16 : {false, true}) {
      SCOPED_TRACE(std::string(c.name) + (bf16 ? ", bf16" : ", f32"));
      const ops::ExpertLayout layout(16, c.hidden, c.act);
      const int64_t R = c.offset.back(), P = layout.total_width(), S = layout.total_hidden();
      Rng rng(0x9d + R + P + bf16);
      const Tensor buf = randn({R, 16}, rng).to(x), w1 = randn({16 * P}, rng, 0.3f).to(x),
                   w2 = randn({S * 16}, rng, 0.3f).to(x), dout = randn({R, 16}, rng).to(x);
      const Tensor b1 = c.bias ? randn({P}, rng).to(x) : Tensor(), b2 = c.bias ? randn({4, 16}, rng).to(x) : Tensor();
      Tensor w1_16 = out(x, w1.shape(), DType::bf16), w2_16 = out(x, w2.shape(), DType::bf16);
      ops::to_bf16(x, w1_16, w1);
      ops::to_bf16(x, w2_16, w2);
      const ops::ExpertWeights w{w1, b1, w2, b2, bf16 ? &w1_16 : nullptr, bf16 ? &w2_16 : nullptr};
      Tensor pre = out(x, {layout.pre_numel(c.offset)}), o = out(x, {R, 16});
      ops::expert_ffn_forward(x, {o, pre, buf, c.offset, layout, w});
      const char* names[4] = {"dw1", "db1", "dw2", "db2"};
      Tensor got[2][4];
      for (int written = 0; written < 2; ++written) {
        Tensor dbuf = out(x, {R, 16});
        Tensor g[4] = {Tensor::zeros(w1.shape(), DType::f32, x), c.bias ? Tensor::zeros({P}, DType::f32, x) : Tensor(),
                       Tensor::zeros(w2.shape(), DType::f32, x), c.bias ? Tensor::zeros({4, 16}, DType::f32, x) : Tensor()};
        if (written)
          for (Tensor& t : g)
            if (t.defined()) poison(t, x);
        ops::ExpertFfnBackwardArgs args{dbuf, {g[0], g[1], g[2], g[3]}, dout, buf, pre, c.offset, layout, w, nullptr,
                                        /*dbuf_accumulate=*/false};
        args.grads_accumulate = written == 0;
        ops::expert_ffn_backward(x, args);
        for (int i = 0; i < 4; ++i)
          if (g[i].defined()) got[written][i] = g[i].to(host_ctx());
      }
      for (int i = 0; i < 4; ++i) {
        if (!got[0][i].defined()) continue;
        if (cpu || R == 0)
          EXPECT_TRUE(bitwise_equal(got[0][i], got[1][i])) << names[i] << ": written differs from accumulated onto zeros";
        else
          EXPECT_LE(rel_l2(got[1][i], got[0][i]), 1e-5) << names[i] << ": written against accumulated onto zeros";
      }
      if (c.empty >= 0) {  // its blocks of dw1 and dw2: exactly zero
        const int64_t g = c.empty;
        for (int64_t e = layout.w1_offset(g); e < layout.w1_offset(g) + 16 * layout.width(g); ++e)
          ASSERT_EQ(got[1][0].f32()[e], 0.f) << "dw1 of the expert without rows, element " << e;
        for (int64_t e = layout.w2_offset(g); e < layout.w2_offset(g) + layout.hidden[g] * 16; ++e)
          ASSERT_EQ(got[1][2].f32()[e], 0.f) << "dw2 of the expert without rows, element " << e;
      }
    }
}

// The bf16-output GEMMs' fused epilogues are taken where cuBLASLt should
// have them (ops/cuda/matmul.cu): a bf16 y with its bias rounded to bf16,
// GELU_AUX_BIAS forward and DGELU backward at 300 x 256 x 384, and an
// expert FFN on padded rows (the strided-batched GEMMs, bf16 pre). Where no
// algorithm serves one, gemm() falls back to fp32 scratch with the same
// values, so the value tests pass either way: this one says whether the
// fast path ran (gemm_bf16_output_fallbacks unchanged). A failure here is
// a finding about cuBLASLt on this GPU (stderr names the GEMM), not wrong
// numbers.
TEST_P(BackendOps, Bf16OutputGemmsTakeTheirEpilogues) {
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "CUDA's cuBLASLt epilogues";
#ifdef SY_WITH_CUDA
  Ctx& x = ctx();
  Rng rng(0xe91);
  const int64_t N = 300, K = 256, M = 384;
  const Tensor xin = randn({N, K}, rng).to(x), w = randn({K, M}, rng, 0.2f).to(x), b = randn({M}, rng).to(x),
               dy = randn({N, M}, rng).to(x);
  Tensor w16 = out(x, {K, M}, DType::bf16);
  ops::to_bf16(x, w16, w);
  const int64_t before = ops::cuda::gemm_bf16_output_fallbacks();
  Tensor y = out(x, {N, M}, DType::bf16), act = out(x, {N, M}, DType::bf16), plain = out(x, {N, M}, DType::bf16);
  ops::matmul_forward(x, {plain, xin, w, b, false, false, &w16});  // bf16 y, bias rounded to bf16
  ops::MatmulArgs f{y, xin, w, b, false, false, &w16};
  f.gelu = &act;
  ops::matmul_forward(x, f);  // GELU_AUX_BIAS
  Tensor dx = out(x, {N, K}, DType::bf16), dw = Tensor::zeros({K, M}, DType::f32, x), db = Tensor::zeros({M}, DType::f32, x);
  // DGELU: this GEMM's x taken as gelu(pre), pre of x's shape (bf16, as dx).
  Tensor pre16 = out(x, {N, K}, DType::bf16);
  ops::to_bf16(x, pre16, randn({N, K}, rng).to(x));
  ops::MatmulBackwardArgs bw{&dx, &dw, &db, dy, xin, w, false, &w16};
  bw.dx_accumulate = false, bw.gelu_pre = &pre16;
  ops::matmul_backward(x, bw);  // DGELU
  EXPECT_EQ(ops::cuda::gemm_bf16_output_fallbacks(), before)
      << "a bf16-output GEMM at 300x256x384 fell back to fp32 scratch (stderr names it)";
  // An expert FFN on padded rows: 4 experts of 96 rows each, bf16 pre.
  const ops::ExpertLayout layout(64, {128, 128, 128, 128}, ops::FfnActivation::gelu);
  const Tensor w1 = randn({4 * 64 * 128}, rng, 0.1f).to(x), b1 = randn({4 * 128}, rng).to(x),
               w2 = randn({4 * 128 * 64}, rng, 0.1f).to(x), b2 = randn({4, 64}, rng).to(x);
  Tensor w1_16 = out(x, w1.shape(), DType::bf16), w2_16 = out(x, w2.shape(), DType::bf16);
  ops::to_bf16(x, w1_16, w1);
  ops::to_bf16(x, w2_16, w2);
  const ops::ExpertWeights ew{w1, b1, w2, b2, &w1_16, &w2_16};
  const std::vector<int32_t> offset{0, 96, 192, 288, 384};
  const Tensor buf = randn({384, 64}, rng).to(x), dout = randn({384, 64}, rng).to(x);
  Tensor pre = out(x, {layout.pre_numel(offset)}, DType::bf16), o = out(x, {384, 64}), dbuf = out(x, {384, 64});
  Tensor g[4] = {Tensor::zeros(w1.shape(), DType::f32, x), Tensor::zeros(b1.shape(), DType::f32, x),
                 Tensor::zeros(w2.shape(), DType::f32, x), Tensor::zeros(b2.shape(), DType::f32, x)};
  const int64_t before_experts = ops::cuda::gemm_bf16_output_fallbacks();
  ops::expert_ffn_forward(x, {o, pre, buf, offset, layout, ew});
  ops::ExpertFfnBackwardArgs args{dbuf, {g[0], g[1], g[2], g[3]}, dout, buf, pre, offset, layout, ew, nullptr,
                                  /*dbuf_accumulate=*/false};
  ops::expert_ffn_backward(x, args);
  EXPECT_EQ(ops::cuda::gemm_bf16_output_fallbacks(), before_experts)
      << "an expert FFN GEMM (96 rows an expert, d 64, hidden 128) fell back to fp32 scratch (stderr names it)";
#endif
}

// A packed route's per-expert GEMMs keep one CUDA plan per row bucket
// (ops/cuda/matmul.cu): experts on 97-112 rows, then on other counts of the
// same bucket, make no new plan, and every call runs on its bucket's
// algorithm (none falls back to an exact shape's plan: were the bucket's
// layouts left at 112 rows, or refused, that would show here). f32, bf16,
// and bf16 with a bf16 pre (the GELU epilogues' plans).
TEST_P(BackendOps, PackedExpertGemmsShareOnePlanPerRowBucket) {
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "CUDA's GEMM plans";
#ifdef SY_WITH_CUDA
  Ctx& x = ctx();
  const ops::ExpertLayout layout(64, {64, 64, 64, 64}, ops::FfnActivation::gelu);
  Rng rng(0xb0c);
  const Tensor w1 = randn({4 * 64 * 64}, rng, 0.1f).to(x), b1 = randn({4 * 64}, rng).to(x),
               w2 = randn({4 * 64 * 64}, rng, 0.1f).to(x), b2 = randn({4, 64}, rng).to(x);
  Tensor w1_16 = out(x, w1.shape(), DType::bf16), w2_16 = out(x, w2.shape(), DType::bf16);
  ops::to_bf16(x, w1_16, w1);
  ops::to_bf16(x, w2_16, w2);
  for (const int mode : {0, 1, 2}) {
    const bool bf16 = mode > 0, pre16 = mode == 2;
    SCOPED_TRACE(pre16 ? "bf16, bf16 pre" : bf16 ? "bf16" : "f32");
    const ops::ExpertWeights w{w1, b1, w2, b2, bf16 ? &w1_16 : nullptr, bf16 ? &w2_16 : nullptr};
    size_t plans = 0;
    int64_t fallbacks = 0;
    int run = 0;
    for (const std::vector<int32_t>& offset : {std::vector<int32_t>{0, 97, 197, 300, 412},
                                               std::vector<int32_t>{0, 100, 203, 300, 412},
                                               std::vector<int32_t>{0, 112, 210, 309, 412}}) {
      const int64_t R = offset.back();
      const Tensor buf = randn({R, 64}, rng).to(x), dout = randn({R, 64}, rng).to(x);
      Tensor pre = out(x, {layout.pre_numel(offset)}, pre16 ? DType::bf16 : DType::f32), o = out(x, {R, 64}),
             dbuf = out(x, {R, 64});
      Tensor g[4] = {Tensor::zeros(w1.shape(), DType::f32, x), Tensor::zeros(b1.shape(), DType::f32, x),
                     Tensor::zeros(w2.shape(), DType::f32, x), Tensor::zeros(b2.shape(), DType::f32, x)};
      ops::expert_ffn_forward(x, {o, pre, buf, offset, layout, w});
      ops::ExpertFfnBackwardArgs args{dbuf, {g[0], g[1], g[2], g[3]}, dout, buf, pre, offset, layout, w, nullptr,
                                      /*dbuf_accumulate=*/false};
      ops::expert_ffn_backward(x, args);
      if (run++ == 0) {
        plans = ops::cuda::gemm_plan_count(), fallbacks = ops::cuda::gemm_bucket_fallbacks();
        continue;
      }
      EXPECT_EQ(ops::cuda::gemm_plan_count(), plans) << "new row counts of the same buckets made new plans";
      EXPECT_EQ(ops::cuda::gemm_bucket_fallbacks(), fallbacks) << "a bucket's plan did not serve its rows";
    }
  }
#endif
}

// bf16 mode's dout may come bf16 (rounded by combine_backward): every
// gradient bit for bit that of an f32 dout holding the same values (the
// GEMMs read the same bf16 operand, db2 sums the same numbers in the same
// order). Equal experts and packed ones, GELU with biases.
TEST_P(BackendOps, ExpertFfnBf16DoutIsItsValuesInF32) {
  Ctx& x = ctx();
  for (const bool equal : {true, false}) {
    SCOPED_TRACE(equal ? "equal experts" : "packed");
    const std::vector<int32_t> offset = equal ? std::vector<int32_t>{0, 6, 12, 18, 24} : std::vector<int32_t>{0, 5, 5, 12, 20};
    const ops::ExpertLayout layout(16, {12, 12, 12, 12}, ops::FfnActivation::gelu);
    const int64_t R = offset.back(), P = layout.total_width(), S = layout.total_hidden();
    Rng rng(0xd16 + R);
    const Tensor buf = randn({R, 16}, rng).to(x), w1 = randn({16 * P}, rng, 0.3f).to(x),
                 w2 = randn({S * 16}, rng, 0.3f).to(x), b1 = randn({P}, rng).to(x), b2 = randn({4, 16}, rng).to(x),
                 dout = randn({R, 16}, rng).to(x);
    Tensor w1_16 = out(x, w1.shape(), DType::bf16), w2_16 = out(x, w2.shape(), DType::bf16);
    ops::to_bf16(x, w1_16, w1);
    ops::to_bf16(x, w2_16, w2);
    const ops::ExpertWeights w{w1, b1, w2, b2, &w1_16, &w2_16};
    Tensor pre = out(x, {layout.pre_numel(offset)}), o = out(x, {R, 16});
    ops::expert_ffn_forward(x, {o, pre, buf, offset, layout, w});
    Tensor dout16 = out(x, {R, 16}, DType::bf16), dout_values = out(x, {R, 16});
    ops::to_bf16(x, dout16, dout);
    ops::to_f32(x, dout_values, dout16);
    std::vector<Tensor> got[2];
    for (int as_bf16 = 0; as_bf16 < 2; ++as_bf16) {
      Tensor dbuf = out(x, {R, 16}), dw1 = Tensor::zeros(w1.shape(), DType::f32, x),
             dw2 = Tensor::zeros(w2.shape(), DType::f32, x), db1 = Tensor::zeros(b1.shape(), DType::f32, x),
             db2 = Tensor::zeros(b2.shape(), DType::f32, x);
      ops::expert_ffn_backward(x, {dbuf, {dw1, db1, dw2, db2}, as_bf16 ? dout16 : dout_values, buf, pre, offset, layout,
                                   w, nullptr, /*dbuf_accumulate=*/false});
      for (const Tensor& t : {dbuf, dw1, db1, dw2, db2}) got[as_bf16].push_back(t.to(host_ctx()));
    }
    const char* names[] = {"dbuf", "dw1", "db1", "dw2", "db2"};
    for (int i = 0; i < 5; ++i)
      EXPECT_TRUE(bitwise_equal(got[0][i], got[1][i])) << names[i] << " from a bf16 dout differs from its values in f32";
  }
}

// The same for the expert FFNs (what GroupedExperts keeps in bf16 mode): the
// forward's bf16(buf) and bf16(act) in backward give dbuf and every weight
// gradient bit for bit those of rounding again and recomputing act; GELU
// with biases (heterogeneous widths) and SwiGLU without. With a bf16 pre
// the kept act is the GELU epilogue's, gelu of the unrounded value
// (ops/expert_ffn.h): within a bf16 step of bf16(gelu(pre)), and dW2 from
// it is what the kept act gives, not the recomputed one (the rest as before).
TEST_P(BackendOps, ExpertFfnBf16BackwardReusesTheForwardsRounding) {
  Ctx& x = ctx();
  // GELU with an f32 pre and with a bf16 one (ops/expert_ffn.h); SwiGLU's is
  // f32. Hidden widths {6, 12, 3, 9}: on CUDA the bf16 pre's GELU epilogue
  // falls back to fp32 scratch and our GELU kernels (rows of other than a
  // multiple of 8 values); {8, 16, 8, 24}: cuBLASLt's GELU_AUX and DGELU.
  for (const auto& [act, pre_dtype, widths] :
       std::vector<std::tuple<ops::FfnActivation, DType, std::vector<int64_t>>>{
           {ops::FfnActivation::gelu, DType::f32, {6, 12, 3, 9}},
           {ops::FfnActivation::gelu, DType::bf16, {6, 12, 3, 9}},
           {ops::FfnActivation::gelu, DType::bf16, {8, 16, 8, 24}},
           {ops::FfnActivation::swiglu, DType::f32, {6, 12, 3, 9}}}) {
    const bool swiglu = act == ops::FfnActivation::swiglu;
    SCOPED_TRACE(std::string(swiglu ? "swiglu" : "gelu") + (pre_dtype == DType::bf16 ? ", bf16 pre" : "") +
                 ", widths " + std::to_string(widths[0]) + "...");
    const std::vector<int32_t> offset{0, 5, 5, 12, 20};
    const ops::ExpertLayout layout(8, widths, act);
    const int64_t P = layout.total_width(), S = layout.total_hidden();
    Rng rng(0xe16);
    const Tensor buf = randn({20, 8}, rng).to(x), w1 = randn({8 * P}, rng, 0.3f).to(x), w2 = randn({S * 8}, rng, 0.3f).to(x),
                 dout = randn({20, 8}, rng).to(x);
    const Tensor b1 = swiglu ? Tensor() : randn({P}, rng).to(x), b2 = swiglu ? Tensor() : randn({4, 8}, rng).to(x);
    Tensor w1_16 = out(x, w1.shape(), DType::bf16), w2_16 = out(x, w2.shape(), DType::bf16);
    ops::to_bf16(x, w1_16, w1);
    ops::to_bf16(x, w2_16, w2);
    const ops::ExpertWeights w{w1, b1, w2, b2, &w1_16, &w2_16};
    // reuse 0: nothing kept; 1: bf16(buf) and bf16(act) kept by the forward
    // and read by backward; 2: buf given as bf16 (rounded by the dispatch),
    // which the forward hands back as buf_bf16 itself.
    std::vector<Tensor> res[3];
    Tensor buf16, act16, pre, given16 = out(x, buf.shape(), DType::bf16), back16;
    ops::to_bf16(x, given16, buf);
    for (int reuse = 0; reuse < 3; ++reuse) {
      Tensor o = out(x, {20, 8}), dbuf = Tensor::zeros({20, 8}, DType::f32, x);
      pre = out(x, {layout.pre_numel(offset)}, pre_dtype);
      Tensor dw1 = Tensor::zeros(w1.shape(), DType::f32, x), dw2 = Tensor::zeros(w2.shape(), DType::f32, x);
      Tensor db1 = swiglu ? Tensor() : Tensor::zeros(b1.shape(), DType::f32, x),
             db2 = swiglu ? Tensor() : Tensor::zeros(b2.shape(), DType::f32, x);
      Tensor& kept16 = reuse == 2 ? back16 : buf16;
      ops::expert_ffn_forward(x, {o, pre, reuse == 2 ? given16 : buf, offset, layout, w, reuse ? &kept16 : nullptr,
                                  reuse ? &act16 : nullptr});
      ops::expert_ffn_backward(x, {dbuf, {dw1, db1, dw2, db2}, dout, reuse ? kept16 : buf, pre, offset, layout, w,
                                   reuse ? &act16 : nullptr});
      res[reuse] = {o.to(host_ctx()), dbuf.to(host_ctx()), dw1.to(host_ctx()), dw2.to(host_ctx())};
      if (!swiglu) res[reuse].insert(res[reuse].end(), {db1.to(host_ctx()), db2.to(host_ctx())});
    }
    EXPECT_TRUE(bitwise_equal(buf16.to(host_ctx()), buf.to(host_ctx()).to(DType::bf16))) << "buf_bf16 is not bf16(buf)";
    EXPECT_EQ(back16.raw(), given16.raw()) << "a bf16 buf is not handed back as buf_bf16";
    EXPECT_EQ(act16.numel(), 5 * widths[0] + 7 * widths[2] + 8 * widths[3]);
    const bool epilogue = !swiglu && pre_dtype == DType::bf16;
    bool act_moved = false;  // (epilogue: the kept act differs from gelu(bf16(z)) somewhere)
    if (!swiglu) {  // GELU's act is packed as pre: act_bf16 = bf16(gelu(pre)), by this backend's gelu
      Tensor a = out(x, pre.shape()), a16 = out(x, pre.shape(), DType::bf16);
      ops::gelu_forward(x, a, pre);
      ops::to_bf16(x, a16, a);
      if (!epilogue) {
        EXPECT_TRUE(bitwise_equal(act16.to(host_ctx()), a16.to(host_ctx()))) << "act_bf16 is not bf16(act)";
      } else {
        // bf16(gelu(z)) against bf16(gelu(bf16(z))): before their roundings
        // the two are gelu' (up to 1.13) times half a bf16 step of z apart,
        // which is more than half a step of gelu(z) where gelu(z) lies a
        // binade below z (z near 1: gelu(1.01) = 0.85), so the rounded values
        // may be two steps apart (2^-6 relative; near 0, of 0.25): over a
        // grid of 400k z in [-4, 4], 43 pass one step (the worst 1.17 steps,
        // at z = 1.004) and none two. A wrong activation (gelu of another
        // value, or none) is far outside that.
        const Tensor kept = act16.to(host_ctx()).to(DType::f32), again = a16.to(host_ctx()).to(DType::f32);
        act_moved = !bitwise_equal(kept, again);
        int64_t far = 0;
        for (int64_t i = 0; i < kept.numel(); ++i) {
          const float k = kept.f32()[i], r = again.f32()[i];
          far += std::fabs(k - r) > 0x1p-6f * std::max(std::fabs(r), 0.25f);
        }
        EXPECT_EQ(far, 0) << "act_bf16 is not the GELU epilogue's bf16(gelu(z))";
      }
    }
    // Every output as without reuse; dW2 reads act, which with the epilogue
    // is gelu(z) rather than gelu(bf16(z)): there reuse 2's against reuse
    // 1's (both read the kept act), and reuse 1's against reuse 0's below.
    for (int reuse = 1; reuse < 3; ++reuse)
      for (size_t i = 0; i < res[0].size(); ++i) {
        const bool dw2 = i == 3;
        if (epilogue && dw2 && reuse == 1) continue;
        EXPECT_TRUE(bitwise_equal(res[epilogue && dw2 ? 1 : 0][i], res[reuse][i]))
            << "output " << i << ", reuse " << reuse;
      }
    // ... and reuse 1's dW2 did read the kept act: where that differs from
    // gelu(bf16(z)), so does dW2 from the one recomputed without reuse.
    if (epilogue && act_moved)
      EXPECT_FALSE(bitwise_equal(res[0][3], res[1][3])) << "dW2 did not read the kept act";
  }
}

}  // namespace sy::op_test
