// Op cases: elementwise, random draws, layout, the optimizer
// (tests/backend_ops_test.cc).
#include "tests/backend_ops/harness.h"

namespace sy::op_test {

void add_layout_cases(std::vector<OpCase>& c) {
  // ---- elementwise, random, layout ----
  // Each of add and mul on both of ops/cuda/elementwise.cu's paths: binary_op4
  // (n % 4 == 0) and binary_op (n 1001).
  c.push_back({"add_mul_scale", Tol::exact, [](Rng& r) { return Ins{randn({1024}, r), randn({1024}, r), randn({1001}, r), randn({1001}, r)}; },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {1024}), fresh(x, {1001}), fresh(x, {1001}), fresh(x, {1001}), fresh(x, {1024})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[0], x);
                 ops::add_into(x, o[0], in[1]);  // float4 path
                 o[1].copy_from(in[2], x);
                 ops::mul_into(x, o[1], in[3]);  // scalar path
                 o[2].copy_from(in[2], x);
                 ops::scale(x, o[2], -0.37f);
                 o[3].copy_from(in[2], x);
                 ops::add_into(x, o[3], in[3]);  // scalar path
                 o[4].copy_from(in[0], x);
                 ops::mul_into(x, o[4], in[1]);  // float4 path
               }});
  c.push_back({"sigmoid", Tol::f32, [](Rng& r) { return Ins{randn({1001}, r, 4.f)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {1001})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::sigmoid(x, o[0], in[0]); }});
  c.push_back({"random_uniform_bits", Tol::exact, [](Rng&) { return Ins{}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {4099}), fresh(x, {517}), fresh(x, {517})}; },
               [](Ctx& x, const Ins&, std::vector<Tensor>& o) {
                 ops::random_uniform(x, o[0], RandomKey{17, random_stream(RandomPurpose::jitter, 1), 3, 1000}, 0.f, 1.f);
                 ops::random_uniform(x, o[1], RandomKey{5, random_stream(RandomPurpose::jitter, 2), 9, 0}, 0.9f, 1.1f);
                 // elements 2^32 - 200 to 2^32 + 316: the counter's high word 0, then 1
                 ops::random_uniform(x, o[2], RandomKey{5, random_stream(RandomPurpose::jitter, 2), 9, (uint64_t{1} << 32) - 200},
                                     0.f, 1.f);
               }});
  c.push_back({"random_normal_gumbel", Tol::f32, [](Rng&) { return Ins{}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {4099}), fresh(x, {777})}; },
               [](Ctx& x, const Ins&, std::vector<Tensor>& o) {
                 ops::random_normal(x, o[0], RandomKey{17, random_stream(RandomPurpose::router_noise, 1), 3, 64}, 0.5f);
                 ops::random_gumbel(x, o[1], RandomKey{17, random_stream(RandomPurpose::gumbel, 1), 4, 8}, 1.5f);
               }});
  c.push_back({"gather_rows", Tol::exact, [](Rng& r) {
                 Tensor idx = Tensor::empty({9}, DType::i64, host_ctx());
                 for (int i = 0; i < 9; ++i) idx.data<int64_t>()[i] = (i * 4) % 9;
                 return Ins{randn({9, 5}, r), idx, randn({9, 8}, r)};
               },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {9, 5}), fresh(x, {9, 8}), fresh(x, {9, 5})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::gather_rows(x, o[0], in[0], in[1]);  // 20-byte rows: 4-byte words
                 ops::gather_rows(x, o[1], in[2], in[1]);  // 32-byte rows: 16-byte words
                 ops::scatter_rows(x, o[2], in[0], in[1]);
               }});
  // ops/cuda/permute.cu's narrower words: 24-byte f32 rows (uint2) and
  // 14-byte bf16 rows (uint16_t).
  c.push_back({"gather_rows_narrow", Tol::exact, [](Rng& r) {
                 Tensor idx = Tensor::empty({9}, DType::i64, host_ctx());
                 for (int i = 0; i < 9; ++i) idx.data<int64_t>()[i] = (i * 4) % 9;
                 return Ins{randn({9, 6}, r), idx, randn({9, 7}, r).to(DType::bf16)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {9, 6}), fresh(x, {9, 6}), fresh(x, {9, 7}, DType::bf16), fresh(x, {9, 7}, DType::bf16)};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::gather_rows(x, o[0], in[0], in[1]);
                 ops::scatter_rows(x, o[1], in[0], in[1]);
                 ops::gather_rows(x, o[2], in[2], in[1]);
                 ops::scatter_rows(x, o[3], in[2], in[1]);
               }});
  // A gather of more rows than it reads, with repeats (the deduplicated
  // dispatch's expert rows from token rows): 13 rows from 5, f32 (16-byte
  // words) and 14-byte bf16 rows.
  c.push_back({"gather_rows_repeats", Tol::exact, [](Rng& r) {
                 Tensor idx = Tensor::empty({13}, DType::i64, host_ctx());
                 for (int i = 0; i < 13; ++i) idx.data<int64_t>()[i] = (i * 3) % 5;
                 return Ins{randn({5, 8}, r), idx, randn({5, 7}, r).to(DType::bf16)};
               },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {13, 8}), fresh(x, {13, 7}, DType::bf16)}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 ops::gather_rows(x, o[0], in[0], in[1]);
                 ops::gather_rows(x, o[1], in[2], in[1]);
               }});
  c.push_back({"split_heads", Tol::exact, [](Rng& r) { return Ins{randn({10, 24}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {2, 10, 4})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::split_heads(x, o[0], in[0], 8); }});
  c.push_back({"merge_heads", Tol::exact, [](Rng& r) { return Ins{randn({3, 10, 4}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{acc(x, {10, 17})}; },  // columns outside [5, 17) stay 0
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) { ops::merge_heads(x, o[0], in[0], 5); }});
  // Grouped-query attention's widening and its backward (6 query heads over
  // 2 key/value heads of 5): copies, and sums of 3 in h's order (bitwise the
  // CPU's in f32 and bf16, signed zeros too).
  c.push_back({"kv_heads_expand_reduce", Tol::exact,
               [](Rng& r) {
                 // (with -0.0 in q columns: copied as they are, not added to 0)
                 Tensor g = randn({7, 50}, r), w = randn({7, 90}, r);
                 for (int64_t n = 0; n < 7; ++n) g.f32()[n * 50 + 3] = w.f32()[n * 90 + 4] = -0.0f;
                 return Ins{g, w, g.to(DType::bf16), w.to(DType::bf16)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {7, 90}), fresh(x, {7, 50}), fresh(x, {7, 90}, DType::bf16),
                             fresh(x, {7, 50}, DType::bf16)};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const ops::KvHeads s{6, 2, 5};
                 ops::expand_kv_heads(x, o[0], in[0], s);
                 ops::reduce_kv_heads(x, o[1], in[1], s);
                 ops::expand_kv_heads(x, o[2], in[2], s);
                 ops::reduce_kv_heads(x, o[3], in[3], s);
               }});
  // ---- optimizer ----
  c.push_back({"adamw_update", Tol::f32,
               [](Rng& r) {
                 // value, grad, m, v (v >= 0) of a decayed (37, 5) and an undecayed (3003) parameter
                 // (CUDA: four elements a thread, and tails of 1 and 3 elements)
                 return Ins{randn({37, 5}, r), randn({37, 5}, r), randn({37, 5}, r, 0.1f), abs_randn({37, 5}, r, 0.1f),
                            randn({3003}, r), randn({3003}, r), randn({3003}, r, 0.1f), abs_randn({3003}, r, 0.1f)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {37, 5}), fresh(x, {37, 5}), fresh(x, {37, 5}), fresh(x, {3003}), fresh(x, {3003}), fresh(x, {3003})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const int from[6] = {0, 2, 3, 4, 6, 7};  // value, m, v of each parameter
                 for (int i = 0; i < 6; ++i) o[i].copy_from(in[from[i]], x);
                 std::vector<ops::AdamWParam> ps{{&o[0], &in[1], &o[1], &o[2], true}, {&o[3], &in[5], &o[4], &o[5], false}};
                 ops::AdamWConfig cfg{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
                 ops::adamw_update(x, ps, cfg, 7);
               }});
  // Clipping applied as AdamW reads the gradients (grad_scale, training's
  // path) against clip_to_norm's pass then AdamW: value, m and v bit for bit
  // on each backend (o[6]: the elements that differ), and against the CPU.
  c.push_back({"adamw_update_grad_scale", Tol::f32,
               [](Rng& r) {
                 return Ins{randn({37, 5}, r), randn({37, 5}, r, 3.f), randn({37, 5}, r, 0.1f), abs_randn({37, 5}, r, 0.1f),
                            randn({3000}, r), randn({3000}, r, 3.f), randn({3000}, r, 0.1f), abs_randn({3000}, r, 0.1f)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {37, 5}), fresh(x, {37, 5}), fresh(x, {37, 5}), fresh(x, {3000}), fresh(x, {3000}),
                             fresh(x, {3000}), fresh(x, {1})};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const int from[6] = {0, 2, 3, 4, 6, 7};
                 std::vector<Tensor> two(6);
                 for (int i = 0; i < 6; ++i) {
                   o[i].copy_from(in[from[i]], x);
                   two[i] = in[from[i]].to(x).clone(x);
                 }
                 const float norm = static_cast<float>(std::sqrt(ops::grad_sq_sum(x, {&in[1], &in[5]})));
                 const float max_norm = 0.37f * norm;  // clipped
                 ops::AdamWConfig cfg{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, ops::clip_scale(norm, max_norm)};
                 ASSERT_LT(cfg.grad_scale, 1.f);
                 std::vector<ops::AdamWParam> ps{{&o[0], &in[1], &o[1], &o[2], true}, {&o[3], &in[5], &o[4], &o[5], false}};
                 ops::adamw_update(x, ps, cfg, 7);
                 Tensor g0 = in[1].to(x).clone(x), g1 = in[5].to(x).clone(x);
                 ops::clip_to_norm(x, {&g0, &g1}, norm, max_norm);
                 std::vector<ops::AdamWParam> ps2{{&two[0], &g0, &two[1], &two[2], true},
                                                  {&two[3], &g1, &two[4], &two[5], false}};
                 cfg.grad_scale = 1.f;
                 ops::adamw_update(x, ps2, cfg, 7);
                 float differ = 0;
                 for (int i = 0; i < 6; ++i) {
                   const Tensor a = o[i].to(host_ctx()), b = two[i].to(host_ctx());
                   for (int64_t e = 0; e < a.numel(); ++e) differ += a.f32()[e] != b.f32()[e];
                 }
                 EXPECT_EQ(differ, 0) << "AdamW with grad_scale differs from clip_to_norm then AdamW";
                 put(x, o[6], std::vector<float>{differ});
               }});
  // AdamW writing bf16 shadows: value, m, v as without them (class F), and
  // the number of shadow elements that are not bf16 of the updated value
  // (0 on both backends; a shadow never written is NaN from the poison).
  c.push_back({"adamw_update_bf16_shadows", Tol::f32,
               [](Rng& r) {
                 return Ins{randn({37, 5}, r), randn({37, 5}, r), randn({37, 5}, r, 0.1f), abs_randn({37, 5}, r, 0.1f),
                            randn({3000}, r), randn({3000}, r), randn({3000}, r, 0.1f), abs_randn({3000}, r, 0.1f)};
               },
               [](Ctx& x, const Ins&) {
                 return Outs{fresh(x, {37, 5}), fresh(x, {37, 5}), fresh(x, {37, 5}), fresh(x, {3000}), fresh(x, {3000}),
                             fresh(x, {3000}), fresh(x, {2}, DType::i32)};
               },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 const int from[6] = {0, 2, 3, 4, 6, 7};
                 for (int i = 0; i < 6; ++i) o[i].copy_from(in[from[i]], x);
                 Tensor s0 = out(x, {37, 5}, DType::bf16), s1 = out(x, {3000}, DType::bf16);
                 poison(s0, x);
                 poison(s1, x);
                 std::vector<ops::AdamWParam> ps{{&o[0], &in[1], &o[1], &o[2], true, &s0},
                                                 {&o[3], &in[5], &o[4], &o[5], false, &s1}};
                 ops::adamw_update(x, ps, ops::AdamWConfig{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f}, 7);
                 std::vector<int32_t> wrong(2, 0);
                 for (int k = 0; k < 2; ++k) {
                   const Tensor want = o[3 * k].to(host_ctx()).to(DType::bf16), got = (k ? s1 : s0).to(host_ctx());
                   for (int64_t e = 0; e < want.numel(); ++e)
                     wrong[k] += want.data<bf16_t>()[e].bits != got.data<bf16_t>()[e].bits;
                 }
                 put(x, o[6], wrong);
               }});
  c.push_back({"grad_norm_and_clip", Tol::f32, [](Rng& r) { return Ins{randn({5000}, r), randn({17, 3}, r)}; },
               [](Ctx& x, const Ins&) { return Outs{fresh(x, {5000}), fresh(x, {17, 3}), fresh(x, {1})}; },
               [](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
                 o[0].copy_from(in[0], x);
                 o[1].copy_from(in[1], x);
                 const double sq = ops::grad_sq_sum(x, {&o[0], &o[1]});
                 ops::clip_to_norm(x, {&o[0], &o[1]}, static_cast<float>(std::sqrt(sq)), 10.f);
                 put(x, o[2], std::vector<float>{static_cast<float>(sq)});
               }});
}

}  // namespace sy::op_test
