// Op cases: bf16 GEMMs (class B against the CPU's bf16 mode) and the expert
// FFNs (tests/backend_ops_test.cc).
#include "tests/backend_ops/harness.h"

namespace sy::op_test {

void add_expert_cases(std::vector<OpCase>& c) {
  // ---- bf16 GEMMs (class B against the CPU's bf16 mode) ----
  // W's shadow made on the backend (ops::to_bf16, as ParamStore does); x, dy
  // fp32 (the op rounds them). Odd shapes, and one large enough for the
  // tensor-core tiles.
  for (const auto& [N, K, M] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{37, 24, 19}, {300, 256, 384}}) {
    c.push_back({"matmul_bf16_" + std::to_string(N) + "x" + std::to_string(K) + "x" + std::to_string(M), Tol::bf16,
                 [N = N, K = K, M = M](Rng& r) {
                   return Ins{randn({N, K}, r), randn({K, M}, r), randn({M}, r), randn({N, M}, r)};
                 },
                 [N = N, K = K, M = M](Ctx& x, const Ins&) {
                   return Outs{fresh(x, {N, M}), acc(x, {N, K}), acc(x, {K, M}), acc(x, {M})};
                 },
                 [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   Tensor w16 = out(x, in[1].shape(), DType::bf16);
                   ops::to_bf16(x, w16, in[1]);
                   ops::matmul_forward(x, {o[0], in[0], in[1], in[2], false, false, &w16});
                   ops::matmul_backward(x, {&o[1], &o[2], &o[3], in[3], in[0], in[1], false, &w16});
                 }});
  }
  // The GELU epilogue (ops/matmul.h): y and gelu(y) from one GEMM, and in
  // backward dx = gelu'(pre) * dy W^T written. bf16 at a shape cuBLASLt's
  // GELU_AUX_BIAS and DGELU take (300x256x384) and one whose forward it
  // cannot (37x24x19: y's rows of 19 values, no multiple of 8, so fp32
  // scratch and the GELU kernels; the backward's dx rows of 24 may take
  // DGELU with operands of 19-value rows, or fall back: the DGELU fallback
  // is sure in expert_ffn_bf16_heterogeneous_pre16), and fp32 (the GEMM and
  // the GELU kernels, class F). The bf16 outputs are compared widened
  // (class B: cuBLASLt's GELU arithmetic is its own, ops/matmul.h; the
  // harness compares outputs that are not f32 bit for bit).
  for (const bool bf16 : {false, true})
    for (const auto& [N, K, M] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{37, 24, 19}, {300, 256, 384}})
      c.push_back({std::string("matmul_gelu_epilogue_") + (bf16 ? "bf16_" : "f32_") + std::to_string(N) + "x" +
                       std::to_string(K) + "x" + std::to_string(M),
                   bf16 ? Tol::bf16 : Tol::f32,
                   [N = N, K = K, M = M](Rng& r) {
                     return Ins{randn({N, K}, r), randn({K, M}, r, 0.2f), randn({M}, r), randn({N, M}, r),
                                randn({N, K}, r)};
                   },
                   [N = N, K = K, M = M](Ctx& x, const Ins&) {
                     return Outs{fresh(x, {N, M}), fresh(x, {N, M}), fresh(x, {N, K}), acc(x, {K, M}), acc(x, {M})};
                   },
                   [bf16](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                     Tensor w16 = out(x, in[1].shape(), DType::bf16), pre = in[4];
                     ops::to_bf16(x, w16, in[1]);
                     // (bf16: y, gelu(y), dx into poisoned bf16 tensors, widened into o after)
                     Tensor y = o[0], act = o[1], dx = o[2];
                     if (bf16) {
                       pre = out(x, in[4].shape(), DType::bf16);
                       ops::to_bf16(x, pre, in[4]);
                       for (Tensor* t : {&y, &act, &dx}) {
                         *t = out(x, t->shape(), DType::bf16);
                         poison(*t, x);
                       }
                     }
                     ops::MatmulArgs f{y, in[0], in[1], in[2], false, false, bf16 ? &w16 : nullptr};
                     f.gelu = &act;
                     ops::matmul_forward(x, f);
                     ops::MatmulBackwardArgs b{&dx, &o[3], &o[4], in[3], in[0], in[1], false, bf16 ? &w16 : nullptr};
                     b.dx_accumulate = false, b.gelu_pre = &pre;
                     ops::matmul_backward(x, b);
                     if (bf16)
                       for (int i = 0; i < 3; ++i) ops::to_f32(x, o[i], i == 0 ? y : i == 1 ? act : dx);
                   }});
  // The same without a bias (model.bias false): cuBLASLt's GELU_AUX, and
  // DGELU with no bias gradient.
  c.push_back({"matmul_gelu_epilogue_bf16_no_bias_300x256x384", Tol::bf16,
               [](Rng& r) {
                 return Ins{randn({300, 256}, r), randn({256, 384}, r, 0.2f), randn({300, 384}, r), randn({300, 256}, r)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {300, 384}), fresh(x, {300, 384}), fresh(x, {300, 256}), acc(x, {256, 384})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {  // (bf16 outputs widened into o, as above)
                 Tensor w16 = out(x, in[1].shape(), DType::bf16), pre = out(x, in[3].shape(), DType::bf16);
                 ops::to_bf16(x, w16, in[1]);
                 ops::to_bf16(x, pre, in[3]);
                 Tensor y = out(x, {300, 384}, DType::bf16), act = out(x, {300, 384}, DType::bf16),
                        dx = out(x, {300, 256}, DType::bf16);
                 for (Tensor* t : {&y, &act, &dx}) poison(*t, x);
                 const Tensor no_bias;
                 ops::MatmulArgs f{y, in[0], in[1], no_bias, false, false, &w16};
                 f.gelu = &act;
                 ops::matmul_forward(x, f);
                 ops::MatmulBackwardArgs b{&dx, &o[3], nullptr, in[2], in[0], in[1], false, &w16};
                 b.dx_accumulate = false, b.gelu_pre = &pre;
                 ops::matmul_backward(x, b);
                 ops::to_f32(x, o[0], y);
                 ops::to_f32(x, o[1], act);
                 ops::to_f32(x, o[2], dx);
               }});
  c.push_back({"matmul_bf16_dx_written_300x256x384", Tol::bf16,
               [](Rng& r) { return Ins{randn({300, 256}, r), randn({256, 384}, r), randn({300, 384}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {300, 256}), acc(x, {256, 384})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor w16 = out(x, in[1].shape(), DType::bf16);
                 ops::to_bf16(x, w16, in[1]);
                 ops::matmul_backward(x, {&o[0], &o[1], nullptr, in[2], in[0], in[1], false, &w16, false});
               }});
  // x already rounded by its producer: read as it is, and handed back as
  // x_bf16; dy bf16 (its db the column sums of its values).
  c.push_back({"matmul_bf16_x_given_300x256x384", Tol::bf16,
               [](Rng& r) { return Ins{randn({300, 256}, r), randn({256, 384}, r), randn({384}, r), randn({300, 384}, r)}; },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {300, 384}), acc(x, {300, 256}), acc(x, {256, 384}), acc(x, {384})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor w16 = out(x, in[1].shape(), DType::bf16), x16 = out(x, in[0].shape(), DType::bf16), back;
                 ops::to_bf16(x, w16, in[1]);
                 ops::to_bf16(x, x16, in[0]);
                 ops::matmul_forward(x, {o[0], x16, in[1], in[2], false, false, &w16, &back});
                 EXPECT_EQ(back.raw(), x16.raw()) << "x_bf16 is the given x";
                 Tensor dy16 = out(x, in[3].shape(), DType::bf16);  // a gradient that is bf16 already
                 ops::to_bf16(x, dy16, in[3]);
                 ops::matmul_backward(x, {&o[1], &o[2], &o[3], dy16, back, in[1], false, &w16});
               }});
  // Experts of hidden widths 6, 12, 3, 9 in bf16 mode; the GELU experts also
  // with a bf16 pre (and so a bf16 dact inside: "_pre16").
  for (const bool pre16 : {false, true})
  c.push_back({std::string("expert_ffn_bf16_heterogeneous") + (pre16 ? "_pre16" : ""), Tol::bf16,
               [](Rng& r) {
                 return Ins{randn({20, 8}, r), randn({8 * 30}, r, 0.3f), randn({30}, r), randn({30 * 8}, r, 0.3f),
                            randn({4, 8}, r), randn({20, 8}, r)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {20, 8}), fresh(x, {123}), acc(x, {20, 8}), acc(x, {8 * 30}), acc(x, {30}),
                             acc(x, {30 * 8}), acc(x, {4, 8})};
               },
               [pre16](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 expert_ffn_bf16(x, in, o, {0, 5, 5, 12, 20}, ops::ExpertLayout(8, {6, 12, 3, 9}), pre16);
               }});
  // Experts of widths 6, 16, 8, 24 with a bf16 pre: expert 1's block of
  // the pre starts at element 30 (60 bytes, 4-byte aligned only), so its
  // GELU epilogues' aux matrix is unaligned for cuBLASLt (gemm() refuses it
  // before any plan: the fallback, with the same values); 9 and then 10
  // rows for it.
  for (const auto& [name, offset, pre_numel] : std::vector<std::tuple<std::string, std::vector<int32_t>, int64_t>>{
           {"9_rows", {0, 5, 14, 14, 20}, 318}, {"10_rows", {0, 5, 15, 15, 20}, 310}})
    c.push_back({"expert_ffn_bf16_unaligned_pre16_" + name, Tol::bf16,
                 [](Rng& r) {
                   return Ins{randn({20, 8}, r), randn({8 * 54}, r, 0.3f), randn({54}, r), randn({54 * 8}, r, 0.3f),
                              randn({4, 8}, r), randn({20, 8}, r)};
                 },
                 [pre_numel = pre_numel](Ctx& x, const Ins&) {
                   return Outs{fresh(x, {20, 8}), fresh(x, {pre_numel}), acc(x, {20, 8}), acc(x, {8 * 54}), acc(x, {54}),
                               acc(x, {54 * 8}), acc(x, {4, 8})};
                 },
                 [offset = offset](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   expert_ffn_bf16(x, in, o, offset, ops::ExpertLayout(8, {6, 16, 8, 24}), true);
                 }});
  // Experts of one size with many rows each (tensor-core tiles): unequal rows
  // (a GEMM per expert), and 4 x 160 rows (a padded route: the strided batch).
  for (const bool pre16 : {false, true})
  for (const auto& [name, offset] : std::vector<std::pair<std::string, std::vector<int32_t>>>{
           {"expert_ffn_bf16_large", {0, 200, 200, 457, 640}}, {"expert_ffn_bf16_equal_rows", {0, 160, 320, 480, 640}}})
    c.push_back({name + (pre16 ? "_pre16" : ""), Tol::bf16,
                 [](Rng& r) {
                   return Ins{randn({640, 64}, r), randn({4, 64, 256}, r, 0.1f), randn({4, 256}, r),
                              randn({4, 256, 64}, r, 0.1f), randn({4, 64}, r), randn({640, 64}, r)};
                 },
                 [](Ctx& x, const Ins&) {
                   return Outs{fresh(x, {640, 64}), fresh(x, {640, 256}), acc(x, {640, 64}), acc(x, {4, 64, 256}),
                               acc(x, {4, 256}), acc(x, {4, 256, 64}), acc(x, {4, 64})};
                 },
                 [offset = offset, pre16](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   expert_ffn_bf16(x, in, o, offset, ops::ExpertLayout(64, {256, 256, 256, 256}), pre16);
                 }});
  // The same without biases (model.bias false), bf16 pre: the strided
  // batch's GELU_AUX and DGELU epilogues with no bias (equal rows), and the
  // packed experts' (a GEMM per expert, bucketed plans).
  for (const auto& [name, offset] : std::vector<std::pair<std::string, std::vector<int32_t>>>{
           {"expert_ffn_bf16_equal_rows_no_bias_pre16", {0, 160, 320, 480, 640}},
           {"expert_ffn_bf16_large_no_bias_pre16", {0, 200, 200, 457, 640}}})
  c.push_back({name, Tol::bf16,
               [](Rng& r) {
                 return Ins{randn({640, 64}, r), randn({4, 64, 256}, r, 0.1f), randn({4, 256, 64}, r, 0.1f),
                            randn({640, 64}, r)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {640, 64}), fresh(x, {640, 256}), acc(x, {640, 64}), acc(x, {4, 64, 256}),
                             acc(x, {4, 256, 64})};
               },
               [offset = offset](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const ops::ExpertLayout layout(64, {256, 256, 256, 256});
                 Tensor w1 = out(x, in[1].shape(), DType::bf16), w2 = out(x, in[2].shape(), DType::bf16);
                 ops::to_bf16(x, w1, in[1]);
                 ops::to_bf16(x, w2, in[2]);
                 const Tensor none;
                 Tensor no_db1, no_db2, pre = out(x, o[1].shape(), DType::bf16);
                 poison(pre, x);
                 const ops::ExpertWeights w{in[1], none, in[2], none, &w1, &w2};
                 ops::expert_ffn_forward(x, {o[0], pre, in[0], offset, layout, w});
                 ops::expert_ffn_backward(x, {o[2], {o[3], no_db1, o[4], no_db2}, in[3], in[0], pre, offset, layout, w});
                 ops::to_f32(x, o[1], pre);
               }});
  c.push_back({"to_bf16", Tol::exact, [](Rng& r) { return Ins{randn({1001}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001}, DType::bf16)}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::to_bf16(x, o[0], in[0]); }});
  c.push_back({"to_f32", Tol::exact, [](Rng& r) { return Ins{randn({1001}, r).to(DType::bf16)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::to_f32(x, o[0], in[0]); }});
  // ---- experts ----
  c.push_back({"expert_ffn", Tol::f32,
               [](Rng& r) {
                 return Ins{randn({20, 8}, r), randn({4, 8, 12}, r, 0.3f), randn({4, 12}, r), randn({4, 12, 8}, r, 0.3f),
                            randn({4, 8}, r), randn({20, 8}, r)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {20, 8}), fresh(x, {20, 12}), acc(x, {20, 8}), acc(x, {4, 8, 12}), acc(x, {4, 12}),
                             acc(x, {4, 12, 8}), acc(x, {4, 8})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const std::vector<int32_t> offset{0, 5, 5, 12, 20};  // expert 1 gets no rows
                 const ops::ExpertLayout layout(8, {12, 12, 12, 12});
                 const ops::ExpertWeights w{in[1], in[2], in[3], in[4]};
                 ops::expert_ffn_forward(x, {o[0], o[1], in[0], offset, layout, w});
                 ops::expert_ffn_backward(x, {o[2], {o[3], o[4], o[5], o[6]}, in[5], in[0], o[1], offset, layout, w});
               }});
  // Equal rows per expert (a padded route): CUDA's strided-batched path, with
  // biases (GELU, batched bias epilogue) and without (SwiGLU over all rows);
  // then GELU at D 6, hidden 10: biases 40 and 24 bytes apart, not 16-byte
  // aligned for every expert, so ops/cuda/matmul.cu adds them by
  // add_bias_rows with gridDim.y = batch (4 experts' biases), then the
  // batched GEMM onto them.
  struct EqualRows {
    std::string name;
    ops::FfnActivation act;
    int64_t D, H;
  };
  for (const EqualRows& e : {EqualRows{"gelu", ops::FfnActivation::gelu, 8, 12},
                             EqualRows{"swiglu", ops::FfnActivation::swiglu, 8, 12},
                             EqualRows{"unaligned_bias", ops::FfnActivation::gelu, 6, 10}}) {
    const int64_t P = e.act == ops::FfnActivation::swiglu ? 2 * e.H : e.H, D = e.D, H = e.H;
    c.push_back({"expert_ffn_equal_rows_" + e.name, Tol::f32,
                 [=](Rng& r) {
                   return Ins{randn({28, D}, r), randn({4, D, P}, r, 0.3f), randn({4, P}, r), randn({4, H, D}, r, 0.3f),
                              randn({4, D}, r), randn({28, D}, r)};
                 },
                 [=](Ctx& x, const Ins&) {
                   return Outs{fresh(x, {28, D}), fresh(x, {28, P}), acc(x, {28, D}), acc(x, {4, D, P}), acc(x, {4, P}),
                               acc(x, {4, H, D}), acc(x, {4, D})};
                 },
                 [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   const std::vector<int32_t> offset{0, 7, 14, 21, 28};
                   const ops::ExpertLayout layout(D, {H, H, H, H}, e.act);
                   const ops::ExpertWeights w{in[1], in[2], in[3], in[4]};
                   ops::expert_ffn_forward(x, {o[0], o[1], in[0], offset, layout, w});
                   ops::expert_ffn_backward(x, {o[2], {o[3], o[4], o[5], o[6]}, in[5], in[0], o[1], offset, layout, w});
                 }});
    // The GELU ones in bf16 with a bf16 pre: widths 12 and 10 are no
    // multiple of 8, so the strided batch's GELU epilogues are refused
    // before cuBLASLt and the fallback runs batched (fp32 scratch over 4
    // experts, its rounded bias's stride not its input's; the batched DGELU
    // fallback).
    if (e.act == ops::FfnActivation::gelu)
      c.push_back({"expert_ffn_bf16_equal_rows_pre16_" + e.name, Tol::bf16,
                   [=](Rng& r) {
                     return Ins{randn({28, D}, r), randn({4, D, P}, r, 0.3f), randn({4, P}, r), randn({4, H, D}, r, 0.3f),
                                randn({4, D}, r), randn({28, D}, r)};
                   },
                   [=](Ctx& x, const Ins&) {
                     return Outs{fresh(x, {28, D}), fresh(x, {28, P}), acc(x, {28, D}), acc(x, {4, D, P}),
                                 acc(x, {4, P}), acc(x, {4, H, D}), acc(x, {4, D})};
                   },
                   [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                     expert_ffn_bf16(x, in, o, {0, 7, 14, 21, 28}, ops::ExpertLayout(D, {H, H, H, H}), true);
                   }});
  }
  // SwiGLU experts of one width on unequal rows, with biases: db1 (2H wide)
  // and db2 in one column-sum launch each on CUDA, experts of 3 and 7 rows
  // (one chunk) beside one of 70 (two).
  c.push_back({"expert_ffn_swiglu_packed_bias", Tol::f32,
               [](Rng& r) {
                 return Ins{randn({80, 8}, r), randn({4, 8, 24}, r, 0.3f), randn({4, 24}, r), randn({4, 12, 8}, r, 0.3f),
                            randn({4, 8}, r), randn({80, 8}, r)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {80, 8}), fresh(x, {80, 24}), acc(x, {80, 8}), acc(x, {4, 8, 24}), acc(x, {4, 24}),
                             acc(x, {4, 12, 8}), acc(x, {4, 8})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const std::vector<int32_t> offset{0, 3, 3, 73, 80};
                 const ops::ExpertLayout layout(8, {12, 12, 12, 12}, ops::FfnActivation::swiglu);
                 const ops::ExpertWeights w{in[1], in[2], in[3], in[4]};
                 ops::expert_ffn_forward(x, {o[0], o[1], in[0], offset, layout, w});
                 ops::expert_ffn_backward(x, {o[2], {o[3], o[4], o[5], o[6]}, in[5], in[0], o[1], offset, layout, w});
               }});
}

}  // namespace sy::op_test
