// Op cases: GEMMs, the model options, norms, activations, embedding,
// cross-entropy, dense and windowed attention (tests/backend_ops_test.cc).
#include "tests/backend_ops/harness.h"

namespace sy::op_test {

void add_dense_cases(std::vector<OpCase>& c) {
  // ---- dense ops ----
  c.push_back({"matmul_forward", Tol::f32, [](Rng& r) { return Ins{randn({37, 24}, r), randn({24, 19}, r), randn({19}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {37, 19})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::matmul_forward(x, {o[0], in[0], in[1], in[2]}); }});
  c.push_back({"matmul_forward_accumulate", Tol::f32,
               [](Rng& r) { return Ins{randn({33, 16}, r), randn({16, 40}, r), randn({33, 40}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {33, 40})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[2], x);
                 ops::matmul_forward(x, {o[0], in[0], in[1], Tensor(), true});
               }});
  c.push_back({"matmul_backward", Tol::f32, [](Rng& r) { return Ins{randn({37, 24}, r), randn({24, 19}, r), randn({37, 19}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {37, 24}), acc(x, {24, 19}), acc(x, {19})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::matmul_backward(x, {&o[0], &o[1], &o[2], in[2], in[0], in[1]});
               }});
  c.push_back({"matmul_backward_many_rows", Tol::f32,  // db by the two-stage column sum
               [](Rng& r) { return Ins{randn({300, 8}, r), randn({8, 5}, r), randn({300, 5}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {300, 8}), acc(x, {8, 5}), acc(x, {5})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::matmul_backward(x, {&o[0], &o[1], &o[2], in[2], in[0], in[1]});
               }});
  // dx written, not accumulated (dx_accumulate false, as Linear's backward
  // asks): dx starts poisoned and must come out as dy W^T alone.
  for (const bool transposed : {false, true})
    c.push_back({std::string("matmul_backward_dx_written") + (transposed ? "_transposed_w" : ""), Tol::f32,
                 [transposed](Rng& r) {
                   return Ins{randn({45, 24}, r), transposed ? randn({19, 24}, r) : randn({24, 19}, r), randn({45, 19}, r)};
                 },
                 [](Ctx& x, const Ins&) { return Outs{fresh(x, {45, 24})}; },
                 [transposed](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::matmul_backward(x, {&o[0], nullptr, nullptr, in[2], in[0], in[1], transposed, nullptr, false});
                 }});
  // ---- the model options (model.position, norm, activation, bias, tie_embeddings) ----
  c.push_back({"matmul_transposed_w", Tol::f32, [](Rng& r) { return Ins{randn({37, 24}, r), randn({19, 24}, r), randn({37, 19}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {37, 19}), acc(x, {37, 24}), acc(x, {19, 24})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::matmul_forward(x, {o[0], in[0], in[1], Tensor(), false, true});
                 ops::matmul_backward(x, {&o[1], &o[2], nullptr, in[2], in[0], in[1], true});
               }});
  // C 48, and C 20: fewer columns than a warp's lanes (lanes with none)
  for (const int64_t C : {48, 20})
    c.push_back({C == 48 ? "rmsnorm" : "rmsnorm_c20", Tol::f32,
                 [C](Rng& r) { return Ins{randn({C == 48 ? 33 : 40, C}, r, 3.f), randn({C}, r), randn({C == 48 ? 33 : 40, C}, r)}; },
                 [C](Ctx& x, const Ins&) {
                   const int64_t N = C == 48 ? 33 : 40;
                   return Outs{fresh(x, {N, C}), fresh(x, {N}), acc(x, {N, C}), acc(x, {C})};
                 },
                 [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::rmsnorm_forward(x, {o[0], o[1], in[0], in[1]});
                   ops::rmsnorm_backward(x, {o[2], o[3], in[2], in[0], in[1], o[1]});
                 }});
  // H 37: one element a thread; H 40: packs of 4 columns (ops/cuda/swiglu.cu).
  for (const int64_t H : {37, 40})
    c.push_back({H == 37 ? "swiglu" : "swiglu_packs", Tol::f32,
                 [H](Rng& r) { return Ins{randn({29, 2 * H}, r, 3.f), randn({29, H}, r)}; },
                 [H](Ctx& x, const Ins&) { return Outs{fresh(x, {29, H}), acc(x, {29, 2 * H})}; },
                 [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::swiglu_forward(x, {o[0], in[0]});
                   ops::swiglu_backward(x, {o[1], in[1], in[0]});
                 }});
  // In place: the outputs start as copies of a packed qkv (rows at positions
  // up to 40000, where fp32 angles would be off by ~1e-3 rad) and of dy.
  c.push_back({"rope", Tol::f32, [](Rng& r) { return Ins{randn({21, 3 * 24}, r), ints({21}, r, 40000), randn({21, 3 * 24}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {21, 3 * 24}), fresh(x, {21, 3 * 24})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[0], x);
                 ops::rope_forward(x, {o[0], in[1], 0, 8, 6, 10000.0});
                 o[1].copy_from(in[2], x);
                 ops::rope_backward(x, {o[1], in[1], 0, 8, 6, 10000.0});
               }});
  c.push_back({"embedding_no_position_table", Tol::exact, [](Rng& r) { return Ins{ints({24}, r, 50), randn({50, 16}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {24, 16})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::embedding_forward(x, {o[0], in[0], in[1], Tensor(), 8}); }});
  c.push_back({"expert_ffn_swiglu_no_bias", Tol::f32,
               [](Rng& r) { return Ins{randn({23, 16}, r), randn({3, 16, 2 * 12}, r, 0.3f), randn({3, 12, 16}, r, 0.3f), randn({23, 16}, r)}; },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {23, 16}), fresh(x, {23, 24}), acc(x, {23, 16}), acc(x, {3, 16, 24}), acc(x, {3, 12, 16})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const std::vector<int32_t> offset = {0, 9, 9, 23};
                 const ops::ExpertLayout layout(16, {12, 12, 12}, ops::FfnActivation::swiglu);
                 const Tensor none;
                 Tensor no_db1, no_db2;
                 ops::expert_ffn_forward(x, {o[0], o[1], in[0], offset, layout, {in[1], none, in[2], none}});
                 ops::expert_ffn_backward(x, {o[2], {o[3], no_db1, o[4], no_db2}, in[3], in[0], o[1], offset, layout,
                                              {in[1], none, in[2], none}});
               }});
  c.push_back({"matmul_transposed_w_bias_accumulate", Tol::f32,
               [](Rng& r) { return Ins{randn({70, 9}, r), randn({33, 9}, r), randn({33}, r), randn({70, 33}, r), randn({70, 33}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {70, 33}), acc(x, {70, 9}), acc(x, {33, 9}), acc(x, {33})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[3], x);
                 ops::matmul_forward(x, {o[0], in[0], in[1], in[2], true, true});
                 ops::matmul_backward(x, {&o[1], &o[2], &o[3], in[4], in[0], in[1], true});
               }});
  // More rows than one column-sum chunk (dw in two stages), C not a multiple
  // of 32; C 37 (one column a thread) and 40 (column_sums' 8-column packs).
  for (const int64_t C : {37, 40})
    c.push_back({C == 37 ? "rmsnorm_many_rows" : "rmsnorm_many_rows_c40", Tol::f32,
                 [C](Rng& r) { return Ins{randn({150, C}, r, 0.2f), randn({C}, r), randn({150, C}, r)}; },
                 [C](Ctx& x, const Ins&) { return Outs{fresh(x, {150, C}), fresh(x, {150}), acc(x, {150, C}), acc(x, {C})}; },
                 [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::rmsnorm_forward(x, {o[0], o[1], in[0], in[1]});
                   ops::rmsnorm_backward(x, {o[2], o[3], in[2], in[0], in[1], o[1]});
                 }});
  // Positions n mod seq_len, 3 heads of 8 in rows of 30 (the last 6 columns left alone), base 500.
  c.push_back({"rope_sequence_positions", Tol::f32, [](Rng& r) { return Ins{randn({20, 30}, r), randn({20, 30}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {20, 30}), fresh(x, {20, 30})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[0], x);
                 ops::rope_forward(x, {o[0], Tensor(), 7, 3, 8, 500.0});
                 o[1].copy_from(in[1], x);
                 ops::rope_backward(x, {o[1], Tensor(), 7, 3, 8, 500.0});
               }});
  // A tied head: dwte already holds the head's gradient; the rows add onto it.
  c.push_back({"embedding_backward_no_position_table", Tol::f32,
               [](Rng& r) { return Ins{ints({96}, r, 11), randn({96, 20}, r), randn({11, 20}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {11, 20})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[2], x);
                 Tensor no_dwpe;
                 ops::embedding_backward(x, {o[0], no_dwpe, in[1], in[0], 8});
               }});
  // SwiGLU experts of hidden widths 6, 12, 3, 9 with biases (pre 5*12 + 7*6 + 8*18 = 246).
  c.push_back({"expert_ffn_swiglu_heterogeneous", Tol::f32,
               [](Rng& r) {
                 return Ins{randn({20, 8}, r), randn({8 * 60}, r, 0.3f), randn({60}, r), randn({30 * 8}, r, 0.3f),
                            randn({4, 8}, r), randn({20, 8}, r)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {20, 8}), fresh(x, {246}), acc(x, {20, 8}), acc(x, {8 * 60}), acc(x, {60}),
                             acc(x, {30 * 8}), acc(x, {4, 8})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const std::vector<int32_t> offset{0, 5, 5, 12, 20};
                 const ops::ExpertLayout layout(8, {6, 12, 3, 9}, ops::FfnActivation::swiglu);
                 const ops::ExpertWeights w{in[1], in[2], in[3], in[4]};
                 ops::expert_ffn_forward(x, {o[0], o[1], in[0], offset, layout, w});
                 ops::expert_ffn_backward(x, {o[2], {o[3], o[4], o[5], o[6]}, in[5], in[0], o[1], offset, layout, w});
               }});
  c.push_back({"expert_ffn_gelu_no_bias", Tol::f32,
               [](Rng& r) { return Ins{randn({23, 16}, r), randn({3, 16, 12}, r, 0.3f), randn({3, 12, 16}, r, 0.3f), randn({23, 16}, r)}; },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {23, 16}), fresh(x, {23, 12}), acc(x, {23, 16}), acc(x, {3, 16, 12}), acc(x, {3, 12, 16})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const std::vector<int32_t> offset = {0, 9, 9, 23};
                 const ops::ExpertLayout layout(16, {12, 12, 12});
                 const Tensor none;
                 Tensor no_db1, no_db2;
                 ops::expert_ffn_forward(x, {o[0], o[1], in[0], offset, layout, {in[1], none, in[2], none}});
                 ops::expert_ffn_backward(x, {o[2], {o[3], no_db1, o[4], no_db2}, in[3], in[0], o[1], offset, layout,
                                              {in[1], none, in[2], none}});
               }});
  // The trainer's diagnosis of a non-finite step: NaN and +-Inf among finite values.
  c.push_back({"count_nonfinite", Tol::exact,
               [](Rng& r) {
                 Tensor t = randn({5003}, r);
                 for (int64_t i = 0; i < 5003; i += 97) t.f32()[i] = std::numeric_limits<float>::quiet_NaN();
                 for (int64_t i = 5; i < 5003; i += 1000) t.f32()[i] = -std::numeric_limits<float>::infinity();
                 t.f32()[5002] = std::numeric_limits<float>::infinity();
                 return Ins{t};
               },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {2}, DType::i64)}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 put(x, o[0], std::vector<int64_t>{ops::count_nonfinite(x, in[0]), ops::count_nonfinite(x, in[0].rows(0, 96))});
               }});
  c.push_back({"layernorm_forward", Tol::f32, [](Rng& r) { return Ins{randn({33, 48}, r, 3.f), randn({48}, r), randn({48}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {33, 48}), fresh(x, {33}), fresh(x, {33})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::layernorm_forward(x, {o[0], o[1], o[2], in[0], in[1], in[2]}); }});
  // ops/cuda/layernorm.cu's forward with the row in registers (C a multiple
  // of 4 up to 2048): 1000 (8 vectors a lane, the last partly past the row),
  // 2048 (16, full), and bf16 y at 1000; rows of 16, 32 and 64 values on 4,
  // 8 and 16 lanes, several rows a warp (N not a multiple of the rows a
  // block: a warp's last rows past N), 64 without w and b, 32 with bf16 y;
  // 48 above (16 lanes, 4 idle); a full warp a row with 1 vector a lane
  // (100: the last lanes' past the row) and 2 (200, bf16 y); 12 on 4 lanes,
  // each group's last vector lane idle. Rows of 37, 70 (no affine) and 2100
  // take the three-pass kernel (the backward cases below run it).
  for (const auto& [N, C, affine, bf] : std::vector<std::tuple<int64_t, int64_t, bool, bool>>{
           {70, 1000, true, false}, {40, 2048, true, false}, {70, 1000, true, true}, {50, 64, false, false},
           {77, 16, true, false}, {45, 32, true, true}, {37, 100, true, false}, {37, 200, true, true},
           {70, 12, true, false}})
    c.push_back({"layernorm_forward_" + std::to_string(C) + (affine ? "" : "_no_affine") + (bf ? "_bf16_y" : ""),
                 bf ? Tol::bf16 : Tol::f32,
                 [N = N, C = C](Rng& r) { return Ins{randn({N, C}, r, 3.f), randn({C}, r), randn({C}, r)}; },
                 [N = N, C = C](Ctx& x, const Ins&) { return Outs{fresh(x, {N, C}), fresh(x, {N}), fresh(x, {N})}; },
                 [N = N, C = C, affine = affine, bf = bf](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   const Tensor w = affine ? in[1] : Tensor(), b = affine ? in[2] : Tensor();
                   if (!bf) return ops::layernorm_forward(x, {o[0], o[1], o[2], in[0], w, b});
                   Tensor y16 = out(x, {N, C}, DType::bf16);
                   poison(y16, x);  // (an element the bf16 store misses reads NaN)
                   ops::layernorm_forward(x, {y16, o[1], o[2], in[0], w, b});
                   ops::to_f32(x, o[0], y16);
                 }});
  c.push_back({"layernorm_backward", Tol::f32,
               [](Rng& r) { return Ins{randn({130, 37}, r, 3.f), randn({37}, r), randn({37}, r), randn({130, 37}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {130, 37}), acc(x, {37}), acc(x, {37})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor y = out(x, {130, 37}), mean = out(x, {130}), rstd = out(x, {130});
                 ops::layernorm_forward(x, {y, mean, rstd, in[0], in[1], in[2]});
                 ops::layernorm_backward(x, {o[0], &o[1], &o[2], in[3], in[0], in[1], mean, rstd});
               }});
  // Rows of 300, 1000 and 1536 values (ops/cuda/layernorm.cu's fused chunks
  // of 64 rows, 16, 32 and 64 columns a lane; the last chunk ragged), 600
  // rows of 256 (10 chunks: the second stage's warps take two each), 65
  // rows of 2048 (the widest the chunks take, 64 columns a lane; a last
  // chunk of one row) and rows of 2100 (too wide for them: dx, then
  // column_sums).
  for (const auto& [N, C] : std::vector<std::pair<int64_t, int64_t>>{
           {130, 300}, {300, 1000}, {100, 1536}, {600, 256}, {65, 2048}, {200, 2100}})
    c.push_back({"layernorm_backward_" + std::to_string(N) + "x" + std::to_string(C), Tol::f32,
                 [N = N, C = C](Rng& r) { return Ins{randn({N, C}, r, 3.f), randn({C}, r), randn({C}, r), randn({N, C}, r)}; },
                 [N = N, C = C](Ctx& x, const Ins&) { return Outs{acc(x, {N, C}), acc(x, {C}), acc(x, {C})}; },
                 [N = N, C = C](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   Tensor y = out(x, {N, C}), mean = out(x, {N}), rstd = out(x, {N});
                   ops::layernorm_forward(x, {y, mean, rstd, in[0], in[1], in[2]});
                   ops::layernorm_backward(x, {o[0], &o[1], &o[2], in[3], in[0], in[1], mean, rstd});
                 }});
  // N <= 64: dw, db by one column-sum chunk (ops/cuda/common.cuh's
  // column_sums, chunks == 1: the serial sum onto dw, db themselves, here
  // random values).
  c.push_back({"layernorm_backward_few_rows", Tol::f32,
               [](Rng& r) {
                 return Ins{randn({33, 48}, r, 3.f), randn({48}, r), randn({48}, r), randn({33, 48}, r), randn({48}, r),
                            randn({48}, r)};
               },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {33, 48}), fresh(x, {48}), fresh(x, {48})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor y = out(x, {33, 48}), mean = out(x, {33}), rstd = out(x, {33});
                 ops::layernorm_forward(x, {y, mean, rstd, in[0], in[1], in[2]});
                 o[1].copy_from(in[4], x);
                 o[2].copy_from(in[5], x);
                 ops::layernorm_backward(x, {o[0], &o[1], &o[2], in[3], in[0], in[1], mean, rstd});
               }});
  c.push_back({"layernorm_no_affine", Tol::f32, [](Rng& r) { return Ins{randn({9, 70}, r, 2.f), randn({9, 70}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {9, 70}), acc(x, {9, 70})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor mean = out(x, {9}), rstd = out(x, {9});
                 ops::layernorm_forward(x, {o[0], mean, rstd, in[0], Tensor(), Tensor()});
                 ops::layernorm_backward(x, {o[1], nullptr, nullptr, in[1], in[0], Tensor(), mean, rstd});
               }});
  c.push_back({"gelu_forward", Tol::f32, [](Rng& r) { return Ins{randn({1001}, r, 3.f)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::gelu_forward(x, o[0], in[0]); }});
  c.push_back({"gelu_backward", Tol::f32, [](Rng& r) { return Ins{randn({1001}, r, 3.f), randn({1001}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::gelu_backward(x, o[0], in[1], in[0]); }});
  // bf16 y for a bf16 GEMM's input (widened here for the comparison: the
  // rounding of fp32 values that agree to class F may differ by an ulp).
  c.push_back({"layernorm_forward_bf16_y", Tol::bf16,
               [](Rng& r) { return Ins{randn({33, 48}, r, 3.f), randn({48}, r), randn({48}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {33, 48}), fresh(x, {33}), fresh(x, {33})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor y16 = out(x, {33, 48}, DType::bf16);
                 ops::layernorm_forward(x, {y16, o[1], o[2], in[0], in[1], in[2]});
                 ops::to_f32(x, o[0], y16);
               }});
  c.push_back({"gelu_forward_bf16_y", Tol::bf16, [](Rng& r) { return Ins{randn({1001}, r, 3.f)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor y16 = out(x, {1001}, DType::bf16);
                 ops::gelu_forward(x, y16, in[0]);
                 ops::to_f32(x, o[0], y16);
               }});
  // bf16 gradients written (not accumulated) over poison, and swiglu's bf16 y.
  c.push_back({"gelu_backward_bf16_dx", Tol::bf16, [](Rng& r) { return Ins{randn({1001}, r, 3.f), randn({1001}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor d16 = out(x, {1001}, DType::bf16);
                 poison(d16, x);
                 ops::gelu_backward(x, d16, in[1], in[0]);
                 ops::to_f32(x, o[0], d16);
               }});
  // x and dy as a bf16 GEMM writes them (the bf16 FFN's pre-activation and
  // its gradient, runtime/layers.h): read widened, so class F against the
  // CPU on the same rounded values; y f32, dx accumulated (onto random
  // values). Bit for bit the fp32 path on the widened values.
  c.push_back({"gelu_bf16_inputs", Tol::f32,
               [](Rng& r) { return Ins{randn({1001}, r, 3.f), randn({1001}, r), randn({1001}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001}), fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor x16 = out(x, {1001}, DType::bf16), g16 = out(x, {1001}, DType::bf16);
                 ops::to_bf16(x, x16, in[0]);
                 ops::to_bf16(x, g16, in[1]);
                 ops::gelu_forward(x, o[0], x16);
                 o[1].copy_from(in[2], x);
                 ops::gelu_backward(x, o[1], g16, x16);
                 Tensor xw = out(x, {1001}), gw = out(x, {1001}), yw = out(x, {1001}), dw = out(x, {1001});
                 ops::to_f32(x, xw, x16);
                 ops::to_f32(x, gw, g16);
                 ops::gelu_forward(x, yw, xw);
                 dw.copy_from(in[2], x);
                 ops::gelu_backward(x, dw, gw, xw);
                 EXPECT_TRUE(bitwise_equal(yw.to(host_ctx()), o[0].to(host_ctx()))) << "gelu of a bf16 x";
                 EXPECT_TRUE(bitwise_equal(dw.to(host_ctx()), o[1].to(host_ctx()))) << "gelu backward of bf16 x, dy";
               }});
  // The same inputs, y and dx written as bf16 (over poison), widened for the
  // comparison: class B, since fp32 values that agree to class F may round
  // an ulp apart (the CPU's and CUDA's GELU are different formulas).
  c.push_back({"gelu_bf16_inputs_bf16_outputs", Tol::bf16,
               [](Rng& r) { return Ins{randn({1001}, r, 3.f), randn({1001}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001}), fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 Tensor x16 = out(x, {1001}, DType::bf16), g16 = out(x, {1001}, DType::bf16);
                 ops::to_bf16(x, x16, in[0]);
                 ops::to_bf16(x, g16, in[1]);
                 Tensor y16 = out(x, {1001}, DType::bf16), d16 = out(x, {1001}, DType::bf16);
                 poison(y16, x);
                 poison(d16, x);
                 ops::gelu_forward(x, y16, x16);
                 ops::to_f32(x, o[0], y16);
                 ops::gelu_backward(x, d16, g16, x16);
                 ops::to_f32(x, o[1], d16);
               }});
  // GELU's one-element-a-thread path (ops/cuda/gelu.cu takes packs of 8
  // only where every pointer is 16-byte aligned; fresh tensors always are):
  // x and dy read 4 bytes into their buffers. Against the CPU, and bit for
  // bit against the packed path on aligned copies of the same values (the
  // same arithmetic an element).
  c.push_back({"gelu_unaligned", Tol::f32,
               [](Rng& r) { return Ins{randn({1002}, r, 3.f), randn({1002}, r), randn({1001}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001}), fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const Tensor xv = in[0].rows(1, 1002), gv = in[1].rows(1, 1002);
                 ops::gelu_forward(x, o[0], xv);
                 o[1].copy_from(in[2], x);  // accumulates onto random values
                 ops::gelu_backward(x, o[1], gv, xv);
                 Tensor xa = out(x, {1001}), ga = out(x, {1001}), ya = out(x, {1001}), da = out(x, {1001});
                 xa.copy_from(xv, x);
                 ga.copy_from(gv, x);
                 da.copy_from(in[2], x);
                 ops::gelu_forward(x, ya, xa);
                 ops::gelu_backward(x, da, ga, xa);
                 EXPECT_TRUE(bitwise_equal(ya.to(host_ctx()), o[0].to(host_ctx()))) << "gelu: packed vs one a thread";
                 EXPECT_TRUE(bitwise_equal(da.to(host_ctx()), o[1].to(host_ctx()))) << "gelu backward: packed vs one a thread";
               }});
  // The same path writing a bf16 y 2 bytes into its buffer (over poison):
  // class B against the CPU (as gelu_bf16_inputs_bf16_outputs), and bit for
  // bit the packed path's bf16 y on aligned copies.
  c.push_back({"gelu_unaligned_bf16_y", Tol::bf16, [](Rng& r) { return Ins{randn({1002}, r, 3.f)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const Tensor xv = in[0].rows(1, 1002);
                 Tensor y16 = out(x, {1002}, DType::bf16);
                 poison(y16, x);
                 Tensor y16v = y16.rows(1, 1002);
                 ops::gelu_forward(x, y16v, xv);
                 ops::to_f32(x, o[0], y16v);
                 Tensor xa = out(x, {1001});
                 Tensor y16a = out(x, {1001}, DType::bf16);
                 xa.copy_from(xv, x);
                 ops::gelu_forward(x, y16a, xa);
                 EXPECT_TRUE(bitwise_equal(y16a.to(host_ctx()), y16v.to(host_ctx()))) << "bf16 gelu: packed vs one a thread";
               }});
  for (const int64_t H : {37, 40})
    c.push_back({H == 37 ? "swiglu_bf16" : "swiglu_bf16_packs", Tol::bf16,
                 [H](Rng& r) { return Ins{randn({29, 2 * H}, r, 3.f), randn({29, H}, r)}; },
                 [H](Ctx& x, const Ins&) { return Outs{fresh(x, {29, H}), fresh(x, {29, 2 * H})}; },
                 [H](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   Tensor y16 = out(x, {29, H}, DType::bf16), d16 = out(x, {29, 2 * H}, DType::bf16);
                   poison(y16, x);
                   poison(d16, x);
                   ops::swiglu_forward(x, {y16, in[0]});
                   ops::swiglu_backward(x, {d16, in[1], in[0]});
                   ops::to_f32(x, o[0], y16);
                   ops::to_f32(x, o[1], d16);
                 }});
  c.push_back({"embedding_forward", Tol::exact, [](Rng& r) { return Ins{ints({24}, r, 50), randn({50, 16}, r), randn({8, 16}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {24, 16})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::embedding_forward(x, {o[0], in[0], in[1], in[2], 8}); }});
  c.push_back({"embedding_backward", Tol::f32, [](Rng& r) { return Ins{ints({96}, r, 11), randn({96, 20}, r), randn({11, 20}, r), randn({12, 20}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {11, 20}), fresh(x, {12, 20})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[2], x);  // gradients accumulate onto what is there
                 o[1].copy_from(in[3], x);
                 ops::embedding_backward(x, {o[0], o[1], in[1], in[0], 8});
               }});
  // C > 256 (ops/cuda/embedding.cu: token_rows_sum's grid.y 2), 24 tokens
  // below 50 (rows no token uses: its early return, the row left as it was).
  c.push_back({"embedding_backward_wide", Tol::f32,
               [](Rng& r) { return Ins{ints({24}, r, 50), randn({24, 300}, r), randn({50, 300}, r), randn({8, 300}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {50, 300}), fresh(x, {8, 300})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[2], x);
                 o[1].copy_from(in[3], x);
                 ops::embedding_backward(x, {o[0], o[1], in[1], in[0], 8});
               }});
  // ops/cuda/cross_entropy.cu's rows (16-byte vectors, a row's unaligned
  // head and tail an element a thread): V 3 (no vector), 67 and 515 (rows
  // starting at every offset mod 4; 32 and 256 threads), 1024 and 4100
  // (aligned rows; 4100: 1025 vectors over 256 threads, one thread with
  // two); and "masked": V 1024 with logits at -inf (every third, and all of
  // the first 512 in row 0, so whole threads see none above -inf).
  for (const auto& [n, V, masked] : std::vector<std::tuple<int64_t, int64_t, bool>>{
           {13, 3, false}, {21, 67, false}, {9, 515, false}, {7, 1024, false}, {5, 4100, false}, {6, 1024, true}}) {
    const std::string name = masked ? "cross_entropy_masked"
                             : V == 67 ? "cross_entropy"
                                       : "cross_entropy_vocab_" + std::to_string(V);
    c.push_back({name, Tol::f32,
                 [n = n, V = V, masked = masked](Rng& r) {
                   Ins in{randn({n, V}, r, 2.f), ints({n}, r, V)};
                   if (masked) {
                     float* l = in[0].f32();
                     const int32_t* y = in[1].data<int32_t>();
                     for (int64_t i = 0; i < n * V; ++i)
                       if ((i % 3 == 0 || i < 512) && i % V != y[i / V]) l[i] = -INFINITY;
                   }
                   return in;
                 },
                 [n = n, V = V](Ctx& x, const Ins&) { return Outs{fresh(x, {n, 2}), fresh(x, {n, V}), fresh(x, {1})}; },
                 [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   const float loss = ops::cross_entropy_forward(x, {o[0], in[0], in[1]});
                   ops::cross_entropy_backward(x, {o[1], in[0], o[0], in[1], 0.5f});
                   put(x, o[2], std::vector<float>{loss});
                 }});
  }
  // Cross-entropy's one-element-a-thread paths (ops/cuda/cross_entropy.cu
  // takes 16-byte vectors only where logits, and in backward d too, are
  // 16-byte aligned): logits 4 bytes into their buffer, V 1024 (every row
  // otherwise all vectors), d written 4 bytes in.
  c.push_back({"cross_entropy_unaligned", Tol::f32,
               [](Rng& r) { return Ins{randn({5 * 1024 + 1}, r, 2.f), ints({5}, r, 1024)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {5, 2}), fresh(x, {5, 1024}), fresh(x, {1})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const Tensor logits = in[0].rows(1, 5 * 1024 + 1).reshape({5, 1024});
                 const float loss = ops::cross_entropy_forward(x, {o[0], logits, in[1]});
                 Tensor d = out(x, {5 * 1024 + 1});
                 poison(d, x);
                 Tensor dv = d.rows(1, 5 * 1024 + 1).reshape({5, 1024});
                 ops::cross_entropy_backward(x, {dv, logits, o[0], in[1], 0.5f});
                 o[1].copy_from(dv, x);
                 put(x, o[2], std::vector<float>{loss});
               }});
  // Dense causal attention, fp32 (class F): head dims 16 (tiny's), 32, 64 and
  // 128 (ops/cuda/attention_kernels.cuh's forward_f32<D>/backward_f32<D>), T
  // not a multiple of any tile (the fp32 kernels tile by 64 or 32; the CPU by
  // blocks of 32 query rows).
  for (const ops::AttentionShape s : {ops::AttentionShape{2, 37, 64, 4}, ops::AttentionShape{2, 77, 64, 2},
                                      ops::AttentionShape{2, 77, 128, 2}, ops::AttentionShape{1, 100, 256, 2}}) {
    c.push_back({"attention_d" + std::to_string(s.C / s.H), Tol::f32,
                 [s](Rng& r) { return Ins{randn({s.B, s.T, 3 * s.C}, r), randn({s.B, s.T, s.C}, r)}; },
                 [s](Ctx& x, const Ins&) {
                   return Outs{fresh(x, {s.B, s.T, s.C}), fresh(x, {s.B, s.H, s.T}), acc(x, {s.B, s.T, 3 * s.C})};
                 },
                 [s](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::attention_forward(x, {o[0], o[1], in[0], s});
                   ops::attention_backward(x, {o[2], in[1], in[0], o[0], o[1], s});
                 }});
  }
  // The sliding window, fp32: windows of one key, shorter than a tile, across
  // tiles and not multiples of 8, at head dims 16, 32 (forward_f32<32> and
  // backward_f32<32> with WindowMask), 64 and 128; the last two compute a
  // subset of the heads (the others' columns and lse rows start at zero and
  // must stay so, as on the CPU).
  auto windowed = [](int64_t B, int64_t T, int64_t C, int64_t H, int64_t w, int64_t heads) {
    ops::AttentionShape s{B, T, C, H};
    s.window = w, s.heads = heads;
    return s;
  };
  for (const ops::AttentionShape s : {windowed(2, 150, 64, 4, 1, 0), windowed(2, 150, 64, 4, 40, 0),
                                      windowed(2, 150, 64, 2, 40, 0), windowed(1, 200, 128, 2, 70, 0),
                                      windowed(1, 300, 256, 2, 33, 1), windowed(2, 130, 64, 4, 65, 3)}) {
    const bool subset = s.heads > 0;
    c.push_back({"attention_window" + std::to_string(s.window) + "_d" + std::to_string(s.C / s.H) +
                     (subset ? "_heads" + std::to_string(s.heads) : ""),
                 Tol::f32, [s](Rng& r) { return Ins{randn({s.B, s.T, 3 * s.C}, r), randn({s.B, s.T, s.C}, r)}; },
                 [s, subset](Ctx& x, const Ins&) {
                   if (subset) return Outs{acc(x, {s.B, s.T, s.C}), acc(x, {s.B, s.H, s.T}), acc(x, {s.B, s.T, 3 * s.C})};
                   return Outs{fresh(x, {s.B, s.T, s.C}), fresh(x, {s.B, s.H, s.T}), acc(x, {s.B, s.T, 3 * s.C})};
                 },
                 [s](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                   ops::attention_forward(x, {o[0], o[1], in[0], s});
                   ops::attention_backward(x, {o[2], in[1], in[0], o[0], o[1], s});
                 }});
  }
}

}  // namespace sy::op_test
