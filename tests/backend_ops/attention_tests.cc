// Backend op tests of attention beyond the op cases: bf16 against the CPU on
// rounded inputs, the tile variants, routed and varlen attention, the
// tolerances' power to catch a missing pair (tests/backend_ops_test.cc).
#include "tests/backend_ops/attention_inputs.h"

namespace sy::op_test {

// Two runs of fwd_bwd(o, lse, dqkv, qkv, dout) on x with the bf16 qkv_b and
// dout_b (o and lse poisoned, dqkv zeroed first): bitwise equal, every
// output written, and class B against the CPU's out_c, lse_c, dqkv_c (rel L2
// <= 1e-2 forward, 3e-2 backward).
void expect_bf16_attention(Ctx& x, const ops::AttentionShape& s, const Tensor& qkv_b, const Tensor& dout_b,
                           const Tensor& out_c, const Tensor& lse_c, const Tensor& dqkv_c,
                           const std::function<void(Tensor&, Tensor&, Tensor&, const Tensor&, const Tensor&)>& fwd_bwd) {
  std::vector<Tensor> runs[2];
  for (auto& r : runs) {
    const Tensor q = qkv_b.to(x), d = dout_b.to(x);
    Tensor o = out(x, {s.B, s.T, s.C}, DType::bf16), l = out(x, {s.B, s.H, s.T}), g = out(x, qkv_b.shape(), DType::bf16);
    poison(o, x);
    poison(l, x);
    g.zero(x);
    fwd_bwd(o, l, g, q, d);
    r = {o.to(host_ctx()), l.to(host_ctx()), g.to(host_ctx())};
  }
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(bitwise_equal(runs[0][i], runs[1][i])) << "output " << i << " differs between two runs";
  const Tensor o = runs[0][0].to(DType::f32), g = runs[0][2].to(DType::f32);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&o, &runs[0][1], &g})
    for (int64_t e = 0; e < t->numel(); ++e) ASSERT_FALSE(std::isnan(t->f32()[e])) << "element " << e << " was never written";
  EXPECT_LE(rel_l2(o, out_c), 1e-2) << "out";
  EXPECT_LE(rel_l2(runs[0][1], lse_c), 1e-2) << "lse";
  EXPECT_LE(rel_l2(g, dqkv_c), 3e-2) << "dqkv";
}

// bf16 attention (class B): the CUDA kernels on bf16 qkv and dout against
// the fp32 CPU reference run on the same bf16-rounded values; rel L2 <= 1e-2
// forward, 3e-2 backward; two runs bitwise equal.
TEST_P(BackendOps, AttentionBf16AgreesWithTheCpuOnRoundedInputs) {
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "bf16 attention runs on CUDA only (the CPU reference is f32)";
  Ctx& x = ctx();
  // The last three: sliding windows across tile edges (forward tiles of 128
  // queries, key tiles of 64 and 32).
  auto windowed = [](ops::AttentionShape s, int64_t w) {
    s.window = w;
    return s;
  };
  // 89 rows (89 mod 32 = 25): a warp of two row tiles (MT 2) whose second
  // tile is partly in the sequence (rows 80-88 of 80-95), with a second
  // sequence after it for a stray write to land in; 77 and 300 leave that
  // tile wholly in or wholly past the end.
  for (const ops::AttentionShape s : {ops::AttentionShape{2, 77, 128, 2}, ops::AttentionShape{1, 300, 128, 2},
                                      ops::AttentionShape{1, 100, 256, 2}, ops::AttentionShape{1, 161, 128, 1},
                                      ops::AttentionShape{2, 89, 128, 2}, ops::AttentionShape{2, 89, 256, 2},
                                      windowed({1, 300, 128, 2}, 100), windowed({1, 161, 128, 1}, 17),
                                      windowed({2, 290, 256, 2}, 129)}) {
    SCOPED_TRACE("B " + std::to_string(s.B) + " T " + std::to_string(s.T) + " D " + std::to_string(s.C / s.H) +
                 " window " + std::to_string(s.window));
    Rng rng(0xbf16 + s.T);
    const Tensor qkv_b = randn({s.B, s.T, 3 * s.C}, rng).to(DType::bf16), dout_b = randn({s.B, s.T, s.C}, rng).to(DType::bf16);
    const Tensor qkv = qkv_b.to(DType::f32), dout = dout_b.to(DType::f32);  // the rounded values, for the CPU
    Tensor out_c = Tensor::zeros({s.B, s.T, s.C}, DType::f32, host_ctx()), lse_c = Tensor::zeros({s.B, s.H, s.T}, DType::f32, host_ctx());
    Tensor dqkv_c = Tensor::zeros(qkv.shape(), DType::f32, host_ctx());
    ops::attention_forward(host_ctx(), {out_c, lse_c, qkv, s});
    ops::attention_backward(host_ctx(), {dqkv_c, dout, qkv, out_c, lse_c, s});
    expect_bf16_attention(x, s, qkv_b, dout_b, out_c, lse_c, dqkv_c, [&](Tensor& o, Tensor& l, Tensor& g, const Tensor& q, const Tensor& d) {
      ops::attention_forward(x, {o, l, q, s});
      ops::attention_backward(x, {g, d, q, o, l, s});
    });
  }
}

#ifdef SY_WITH_CUDA
// The bf16 causal attention's other tile configurations
// (ops/cuda/attention_variants.h; bench_ops times them): each, forward and
// backward, in class B against the CPU on the rounded inputs, two runs
// bitwise equal, every output written; at lengths that are no multiple of
// any tile and at one that spans several.
TEST_P(BackendOps, AttentionBf16VariantsAgreeWithTheCpu) {
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "the variants are CUDA kernels";
  Ctx& x = ctx();
  for (const int64_t D : {int64_t{64}, int64_t{128}})
    for (const ops::AttentionShape s : {ops::AttentionShape{2, 77, 2 * D, 2}, ops::AttentionShape{1, 300, 2 * D, 2},
                                        ops::AttentionShape{2, 89, 2 * D, 2}}) {  // 89: as in the test above
      Rng rng(0xa77 + s.T + D);
      const Tensor qkv_b = randn({s.B, s.T, 3 * s.C}, rng).to(DType::bf16);
      const Tensor dout_b = randn({s.B, s.T, s.C}, rng).to(DType::bf16);
      const Tensor qkv = qkv_b.to(DType::f32), dout = dout_b.to(DType::f32);
      Tensor out_c = Tensor::zeros({s.B, s.T, s.C}, DType::f32, host_ctx());
      Tensor lse_c = Tensor::zeros({s.B, s.H, s.T}, DType::f32, host_ctx());
      Tensor dqkv_c = Tensor::zeros(qkv.shape(), DType::f32, host_ctx());
      ops::attention_forward(host_ctx(), {out_c, lse_c, qkv, s});
      ops::attention_backward(host_ctx(), {dqkv_c, dout, qkv, out_c, lse_c, s});
      const std::vector<ops::cuda::AttentionVariant> variants = ops::cuda::attention_variants(D);
      ASSERT_GE(variants.size(), 2u);
      for (size_t v = 0; v < variants.size(); ++v) {
        SCOPED_TRACE(variants[v].name + " B " + std::to_string(s.B) + " T " + std::to_string(s.T) + " D " +
                     std::to_string(D));
        expect_bf16_attention(x, s, qkv_b, dout_b, out_c, lse_c, dqkv_c,
                              [&](Tensor& o, Tensor& l, Tensor& g, const Tensor& q, const Tensor& d) {
                                ops::cuda::attention_forward_variant(x, {o, l, q, s}, v);
                                ops::cuda::attention_backward_variant(x, {g, d, q, o, l, s}, v);
                              });
      }
    }
  // What they refuse: fp32, a window, another head dim, a variant past the list.
  const ops::AttentionShape s{1, 64, 128, 2};
  Tensor q32 = Tensor::zeros({1, 64, 384}, DType::f32, x), o32 = Tensor::zeros({1, 64, 128}, DType::f32, x);
  Tensor l = Tensor::zeros({1, 2, 64}, DType::f32, x);
  EXPECT_THROW(ops::cuda::attention_forward_variant(x, {o32, l, q32, s}, 1), Error);
  Tensor q16 = Tensor::zeros({1, 64, 384}, DType::bf16, x), o16 = Tensor::zeros({1, 64, 128}, DType::bf16, x);
  ops::AttentionShape w = s;
  w.window = 16;
  EXPECT_THROW(ops::cuda::attention_forward_variant(x, {o16, l, q16, w}, 1), Error);
  EXPECT_THROW(ops::cuda::attention_forward_variant(x, {o16, l, q16, s}, 99), Error);
  EXPECT_TRUE(ops::cuda::attention_variants(32).empty());
}
#endif

// key_sets = false (what the layer and bench_attention ask for): the same o,
// lse and gradients bit for bit, and the same pair count - counted alone on
// CUDA's packed paths (no index lists; backward walks the segments), the
// full key sets on the CPU (its backward walks them). Both modes.
TEST_P(BackendOps, RoutedAttentionCountsPairsWhenKeySetsAreNotWanted) {
  ops::ClusterParams bal;
  bal.mode = ops::ClusterMode::balanced;
  for (const RoutedSpec& spec :
       {RoutedSpec{"causal_d64", 200, 7, 64, ops::ClusterParams{}, false},
        RoutedSpec{"balanced_d64", 200, 7, 64, bal, false}}) {
    SCOPED_TRACE(spec.name);
    Ctx& x = ctx();
    Rng rng(0xc0);
    const Ins h = routed_inputs(spec, rng);
    std::vector<Tensor> in;
    for (const Tensor& t : h) in.push_back(t.to(x));
    const int64_t T = spec.T, D = spec.D;
    const ops::Clusters cl{route_from(in[4], in[5], in[6], T), route_from(in[7], in[8], in[9], T)};
    // want_sets 0: counted; 1: key sets; 2: the count left in device memory
    // and the packing saved for the backward, as the layer runs it.
    std::vector<Tensor> res[3];
    int64_t pairs[3];
    for (int want_sets = 0; want_sets < 3; ++want_sets) {
      Tensor o = out(x, {T, D}), lse = out(x, {T});
      Tensor dq = Tensor::zeros({T, D}, DType::f32, x), dk = Tensor::zeros({T, D}, DType::f32, x),
             dv = Tensor::zeros({T, D}, DType::f32, x), count = Tensor::zeros({1}, DType::f64, x);
      ops::KeySets ks;
      ops::RoutedSaved saved;
      const bool device_count = want_sets == 2;
      ops::routed_attention_forward(x, {o, lse, ks, in[0], in[1], in[2], cl, want_sets == 1,
                                        device_count ? count.data<double>() : nullptr, device_count ? &saved : nullptr});
      ops::routed_attention_backward(x, {dq, dk, dv, in[3], o, lse, in[0], in[1], in[2], ks, cl,
                                         device_count ? &saved : nullptr});
      pairs[want_sets] = device_count ? static_cast<int64_t>(count.to(host_ctx()).to_vector<double>()[0]) : ks.pairs();
      if (want_sets == 0 && GetParam() == DeviceKind::cuda) {
        EXPECT_FALSE(ks.idx.defined()) << "CUDA's packed path built the index lists anyway";
        EXPECT_EQ(ks.counted, ks.pairs());
      }
      res[want_sets] = {o.to(host_ctx()), lse.to(host_ctx()), dq.to(host_ctx()), dk.to(host_ctx()), dv.to(host_ctx())};
    }
    EXPECT_GT(pairs[1], T);
    EXPECT_EQ(pairs[0], pairs[1]);
    EXPECT_EQ(pairs[2], pairs[1]) << "the count left in device memory";
    for (int m : {0, 2})
      for (size_t i = 0; i < res[m].size(); ++i)
        EXPECT_TRUE(bitwise_equal(res[m][i], res[1][i])) << "mode " << m << ", output " << i;
  }
}

// Two bf16 runs of an attention over key sets (o, lse, dq, dk, dv widened;
// the key sets' off, idx) against the CPU's f32 outputs on the rounded
// inputs (want: o, lse, dq, dk, dv; its key sets): the runs bitwise equal,
// the key sets exactly, no NaN, lse -inf exactly where the CPU's is and the
// rest class B (attention backward 3e-2).
void expect_bf16_runs(const std::vector<Tensor> (&runs)[2], const std::vector<Tensor>& want, const ops::KeySets& ks) {
  for (size_t i = 0; i < runs[0].size(); ++i)
    EXPECT_TRUE(bitwise_equal(runs[0][i], runs[1][i])) << "output " << i << " differs between two runs";
  const std::vector<Tensor>& g = runs[0];
  EXPECT_EQ(g[5].to_vector<int64_t>(), ks.off.to_vector<int64_t>()) << "key set offsets";
  EXPECT_EQ(g[6].to_vector<int32_t>(), ks.idx.to_vector<int32_t>()) << "key set indices";
  for (const int i : {0, 2, 3, 4})
    for (int64_t e = 0; e < g[i].numel(); ++e) ASSERT_FALSE(std::isnan(g[i].f32()[e])) << "output " << i << " element " << e;
  std::vector<float> l = g[1].to_vector<float>(), lc = want[1].to_vector<float>();
  for (size_t t = 0; t < l.size(); ++t) {
    ASSERT_EQ(std::isinf(l[t]), std::isinf(lc[t])) << "lse of query " << t;
    if (std::isinf(l[t])) l[t] = lc[t] = 0.f;
  }
  EXPECT_LE(rel_l2(Tensor::from_host(l), Tensor::from_host(lc)), 1e-2) << "lse";
  EXPECT_LE(rel_l2(g[0], want[0]), 1e-2) << "o";
  EXPECT_LE(rel_l2(g[2], want[2]), 3e-2) << "dq";
  EXPECT_LE(rel_l2(g[3], want[3]), 3e-2) << "dk";
  EXPECT_LE(rel_l2(g[4], want[4]), 3e-2) << "dv";
}

// Routed attention on bf16 tensors (head dims 64 and 128: causal clusters
// on the packed path, balanced ones on the union packing, both on the
// tensor-core varlen kernels) against the CPU's f32 reference on the
// bf16-rounded inputs, class B; the key sets exactly; two runs bitwise
// equal; outputs poisoned first. Clusters with dropped tokens and lone
// queries (no key at or before them) included. 1200 tokens in 9 clusters:
// clusters of more keys than a tile, so tiles wholly below the diagonal
// (no mask read) in every kernel at both head dims. At d64 a third run
// takes every tensor as a view one element in (no 16-byte chunks: the
// merge's, scatter's and gathers' element paths), bit for bit the first.
TEST_P(BackendOps, RoutedAttentionBf16AgreesWithTheCpuOnRoundedInputs) {
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "the CPU's bf16 path is the f32 one (routed_attention_test)";
  Ctx& x = ctx();
  ops::ClusterParams causal, drops, bal;
  drops.dropless = false;
  drops.capacity_factor = 0.7f;
  bal.mode = ops::ClusterMode::balanced;
  for (const RoutedSpec& spec : {RoutedSpec{"d64", 300, 17, 64, causal, false},
                                 RoutedSpec{"d128_drops", 257, 5, 128, drops, false},
                                 RoutedSpec{"d64_shared_keys", 130, 3, 64, causal, true},
                                 RoutedSpec{"balanced_d64", 300, 17, 64, bal, false},
                                 RoutedSpec{"balanced_70_clusters_d128", 200, 70, 128, bal, false},
                                 RoutedSpec{"d64_1200_tokens", 1200, 9, 64, causal, false},
                                 RoutedSpec{"d128_1200_tokens", 1200, 9, 128, causal, false}}) {
    SCOPED_TRACE(spec.name);
    const int64_t T = spec.T, D = spec.D;
    Rng rng(0xb16 + T);
    Ins in = routed_inputs(spec, rng);
    for (int i = 0; i < 4; ++i) in[i] = in[i].to(DType::bf16).to(DType::f32);  // the rounded values
    Ctx& h = host_ctx();
    const ops::Clusters cl_h{route_from(in[4], in[5], in[6], T), route_from(in[7], in[8], in[9], T)};
    Tensor o_c = Tensor::zeros({T, D}, DType::f32, h), lse_c = Tensor::zeros({T}, DType::f32, h);
    Tensor dq_c = Tensor::zeros({T, D}, DType::f32, h), dk_c = Tensor::zeros({T, D}, DType::f32, h),
           dv_c = Tensor::zeros({T, D}, DType::f32, h);
    ops::KeySets ks_c;
    ops::routed_attention_forward(h, {o_c, lse_c, ks_c, in[0], in[1], in[2], cl_h});
    ops::routed_attention_backward(h, {dq_c, dk_c, dv_c, in[3], o_c, lse_c, in[0], in[1], in[2], ks_c, cl_h});
    // (unaligned: a (T, D) bf16 tensor one element into its storage)
    auto bf16_td = [&](bool unaligned) {
      return unaligned ? Tensor::empty({T * D + 1}, DType::bf16, x).rows(1, T * D + 1).reshape({T, D})
                       : out(x, {T, D}, DType::bf16);
    };
    auto run = [&](bool unaligned) {
      std::vector<Tensor> d;
      for (int i = 0; i < 10; ++i) {
        d.push_back(i < 4 ? in[i].to(DType::bf16).to(x) : in[i].to(x));
        if (i < 4 && unaligned) {
          Tensor view = bf16_td(true);
          view.copy_from(d.back(), x);
          d.back() = view;
        }
      }
      const ops::Clusters cl{route_from(d[4], d[5], d[6], T), route_from(d[7], d[8], d[9], T)};
      Tensor o = bf16_td(unaligned), lse = out(x, {T}), dq = bf16_td(unaligned), dk = bf16_td(unaligned),
             dv = bf16_td(unaligned);
      poison(o, x);
      poison(lse, x);
      for (Tensor* g : {&dq, &dk, &dv}) g->zero(x);
      ops::KeySets ks;
      ops::routed_attention_forward(x, {o, lse, ks, d[0], d[1], d[2], cl});
      ops::routed_attention_backward(x, {dq, dk, dv, d[3], o, lse, d[0], d[1], d[2], ks, cl});
      return std::vector<Tensor>{o.to(h).to(DType::f32), lse.to(h), dq.to(h).to(DType::f32), dk.to(h).to(DType::f32),
                                 dv.to(h).to(DType::f32), ks.off.to(h), ks.idx.to(h)};
    };
    std::vector<Tensor> runs[2] = {run(false), run(false)};
    expect_bf16_runs(runs, {o_c, lse_c, dq_c, dk_c, dv_c}, ks_c);
    if (spec.name == "d64") {
      const std::vector<Tensor> odd = run(true);
      for (size_t i = 0; i < odd.size(); ++i)
        EXPECT_TRUE(bitwise_equal(odd[i], runs[0][i])) << "output " << i << " differs on views one element in";
    }
  }
}

// Varlen attention between member rows (ops/cuda/attention_varlen.h, the
// tiled path for routed attention's clusters) against the CPU's sparse
// attention over the key sets its flags define: segments of 0, 1, 77, 130
// and 300 rows (empty, one row, ragged, across tiles), random query and key
// flags, 2 heads; f32 at head dims 16 and 64 (class F), bf16 at 64 on
// bf16-rounded inputs (class B); outputs poisoned first, two runs bitwise equal.
TEST_P(BackendOps, VarlenMemberAttentionAgreesWithSparseAttentionOverItsKeySets) {
#ifndef SY_WITH_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "CUDA's kernels (the CPU reference is sparse attention)";
  Ctx& x = ctx();
  const std::vector<int32_t> seg = {0, 0, 1, 78, 208, 508};
  const int64_t rows = seg.back(), H = 2;
  std::vector<int32_t> is_q(rows), is_k(rows);
  Rng flags(0xf1a6);
  for (int64_t r = 0; r < rows; ++r) is_q[r] = flags.uniform() < 0.7, is_k[r] = flags.uniform() < 0.7;
  for (const auto& [D, dt] : {std::pair<int64_t, DType>{16, DType::f32}, {64, DType::f32}, {64, DType::bf16}}) {
    SCOPED_TRACE("D " + std::to_string(D) + " " + dtype_name(dt));
    const int64_t C = H * D;
    Rng rng(0x7a4 + D);
    Tensor qkv = randn({rows, 3 * C}, rng), dout = randn({rows, C}, rng);
    if (dt == DType::bf16) qkv = qkv.to(DType::bf16).to(DType::f32), dout = dout.to(DType::bf16).to(DType::f32);
    // The reference, head by head: row i (a query) sees the key rows j <= i of its segment.
    Tensor o_c = Tensor::zeros({rows, C}, DType::f32, host_ctx()), l_c = Tensor::zeros({H, rows}, DType::f32, host_ctx());
    Tensor d_c = Tensor::zeros({rows, 3 * C}, DType::f32, host_ctx());
    ops::KeySetsBuilder kb;
    for (size_t b = 0; b + 1 < seg.size(); ++b)
      for (int32_t i = seg[b]; i < seg[b + 1]; ++i) {
        std::vector<int32_t> keys;
        if (is_q[i])
          for (int32_t j = seg[b]; j <= i; ++j)
            if (is_k[j]) keys.push_back(j);
        kb.add_query(keys);
      }
    const ops::KeySets ks = kb.build(host_ctx());
    auto part = [&](const Tensor& t, int64_t width, int64_t col) {
      Tensor p = Tensor::zeros({rows, D}, DType::f32, host_ctx());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d) p.f32()[r * D + d] = t.f32()[r * width + col + d];
      return p;
    };
    auto put = [&](Tensor& t, int64_t width, int64_t col, const Tensor& p) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d) t.f32()[r * width + col + d] = p.f32()[r * D + d];
    };
    for (int64_t h = 0; h < H; ++h) {
      const Tensor q = part(qkv, 3 * C, h * D), k = part(qkv, 3 * C, C + h * D), v = part(qkv, 3 * C, 2 * C + h * D);
      const Tensor g = part(dout, C, h * D);
      Tensor o = Tensor::zeros({rows, D}, DType::f32, host_ctx()), l = Tensor::zeros({rows}, DType::f32, host_ctx());
      Tensor dq = Tensor::zeros({rows, D}, DType::f32, host_ctx()), dk = dq.clone(), dv = dq.clone();
      ops::sparse_attention_forward(host_ctx(), {o, l, q, k, v, ks});
      ops::sparse_attention_backward(host_ctx(), {dq, dk, dv, g, o, l, q, k, v, ks});
      put(o_c, C, h * D, o);
      for (int64_t r = 0; r < rows; ++r) l_c.f32()[h * rows + r] = l.f32()[r];
      put(d_c, 3 * C, h * D, dq), put(d_c, 3 * C, C + h * D, dk), put(d_c, 3 * C, 2 * C + h * D, dv);
    }
    const Tensor seg_d = Tensor::from_host(seg).to(x), q_d = Tensor::from_host(is_q).to(x), k_d = Tensor::from_host(is_k).to(x);
    ops::cuda::VarlenAttention va;
    va.segments = static_cast<int64_t>(seg.size()) - 1, va.max_len = 300, va.rows = rows, va.C = C, va.H = H;
    va.seg = seg_d.data<int32_t>(), va.is_query = q_d.data<int32_t>(), va.is_key = k_d.data<int32_t>();
    std::vector<Tensor> runs[2];
    for (auto& r : runs) {
      const Tensor qd = (dt == DType::bf16 ? qkv.to(DType::bf16) : qkv).to(x);
      const Tensor gd = (dt == DType::bf16 ? dout.to(DType::bf16) : dout).to(x);
      Tensor o = out(x, {rows, C}, dt), l = out(x, {H, rows}), dq = Tensor::zeros({rows, 3 * C}, dt, x);
      poison(o, x);
      poison(l, x);
      ops::cuda::varlen_attention_forward(x, va, qd, o, l);
      ops::cuda::varlen_attention_backward(x, va, dq, gd, qd, o, l);
      r = {o.to(host_ctx()), l.to(host_ctx()), dq.to(host_ctx())};
    }
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(bitwise_equal(runs[0][i], runs[1][i])) << "output " << i << " differs between two runs";
    const Tensor o = runs[0][0].dtype() == DType::f32 ? runs[0][0] : runs[0][0].to(DType::f32);
    const Tensor d = runs[0][2].dtype() == DType::f32 ? runs[0][2] : runs[0][2].to(DType::f32);
    for (int64_t e = 0; e < o.numel(); ++e) ASSERT_FALSE(std::isnan(o.f32()[e])) << "out element " << e << " never written";
    for (int64_t e = 0; e < l_c.numel(); ++e) {
      const float got = runs[0][1].f32()[e], want = l_c.f32()[e];
      ASSERT_FALSE(std::isnan(got)) << "lse element " << e << " never written";
      if (std::isinf(want))
        ASSERT_EQ(got, want) << "lse element " << e << ": a row with no key";
      else
        ASSERT_NEAR(got, want, (dt == DType::bf16 ? 2e-2 : 1e-5) * (1.0 + std::fabs(want))) << "lse element " << e;
    }
    const double tf = dt == DType::bf16 ? 1e-2 : 1e-5, tb = dt == DType::bf16 ? 3e-2 : 1e-5;
    EXPECT_LE(rel_l2(o, o_c), tf) << "out";
    EXPECT_LE(rel_l2(d, d_c), tb) << "dqkv";
  }
#endif
}

// Varlen attention in routed attention's split layout (a segment's keys,
// then its queries, each side in position order; a pair needs pos[j] <=
// pos[i]), bf16 at head dim 64: segments of 200 keys + 60 queries and 64
// keys + 100 queries, so whole forward (128-row) and dQ (64-row) tiles are
// key rows that see no key - the tiles the kernels skip. Those rows, and
// any query placed before every key of its segment (the second segment's
// first, with this seed), get o = 0 and lse = -inf exactly; the rest agree
// with the CPU's sparse attention over the same pairs (class B); with the
// flags read and with all_flagged; outputs poisoned first, two runs
// bitwise equal. Head dims 64 and 128. Also: a segment of 128 keys at
// positions 0-127 then 153 queries after them all (281 rows: ragged at the
// block, the warp, a warp's second row tile and its 8-row half; tiles
// wholly below the diagonal, no mask read), one of keys only, one of
// queries only and an empty one.
TEST_P(BackendOps, VarlenSplitLayoutSkipsKeyOnlyTiles) {
#ifndef SY_WITH_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "CUDA's kernels (the CPU reference is sparse attention)";
  Ctx& x = ctx();
  Ctx& h = host_ctx();
  struct Side {
    int32_t keys, queries;
    bool keys_first;  // every key before every query (no shuffle)
  };
  const std::vector<Side> sides = {{200, 60, false}, {64, 100, false}, {128, 153, true},
                                   {40, 0, false},   {0, 30, false},   {0, 0, false}};
  for (const int64_t D : {int64_t{64}, int64_t{128}}) {
    SCOPED_TRACE("D " + std::to_string(D));
    std::vector<int32_t> seg = {0}, key_len, is_q, is_k, pos;
    Rng rng(0x5b1f);
    for (const auto& [m, q, keys_first] : sides) {
      std::vector<int32_t> p(m + q);
      std::iota(p.begin(), p.end(), 0);
      if (!keys_first)
        for (int64_t i = m + q - 1; i > 0; --i) std::swap(p[i], p[rng.between(0, i)]);
      std::sort(p.begin(), p.begin() + m);
      std::sort(p.begin() + m, p.end());
      for (int32_t r = 0; r < m + q; ++r) is_k.push_back(r < m), is_q.push_back(r >= m), pos.push_back(p[r]);
      key_len.push_back(m);
      seg.push_back(seg.back() + m + q);
    }
    const int64_t rows = seg.back();
    Tensor qkv = randn({rows, 3 * D}, rng).to(DType::bf16).to(DType::f32);
    Tensor dout = randn({rows, D}, rng).to(DType::bf16).to(DType::f32);
    // The reference: query row i sees the key rows j of its segment with pos[j] <= pos[i].
    ops::KeySetsBuilder kb;
    for (size_t b = 0; b + 1 < seg.size(); ++b)
      for (int32_t i = seg[b]; i < seg[b + 1]; ++i) {
        std::vector<int32_t> keys;
        if (is_q[i])
          for (int32_t j = seg[b]; j < seg[b + 1]; ++j)
            if (is_k[j] && pos[j] <= pos[i]) keys.push_back(j);
        kb.add_query(keys);
      }
    const ops::KeySets ks = kb.build(h);
    auto part = [&](const Tensor& t, int64_t width, int64_t col) {
      Tensor p = Tensor::zeros({rows, D}, DType::f32, h);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d) p.f32()[r * D + d] = t.f32()[r * width + col + d];
      return p;
    };
    const Tensor q = part(qkv, 3 * D, 0), k = part(qkv, 3 * D, D), v = part(qkv, 3 * D, 2 * D);
    Tensor o_c = Tensor::zeros({rows, D}, DType::f32, h), l_c = Tensor::zeros({rows}, DType::f32, h);
    Tensor dq = Tensor::zeros({rows, D}, DType::f32, h), dk = dq.clone(), dv = dq.clone();
    ops::sparse_attention_forward(h, {o_c, l_c, q, k, v, ks});
    ops::sparse_attention_backward(h, {dq, dk, dv, dout, o_c, l_c, q, k, v, ks});
    int64_t lone = 0;  // queries before every key of a segment that has keys
    for (size_t b = 0; b + 1 < seg.size(); ++b)
      if (key_len[b] > 0)
        for (int32_t r = seg[b]; r < seg[b + 1]; ++r) lone += is_q[r] && std::isinf(l_c.f32()[r]);
    EXPECT_GT(lone, 0) << "the layout was meant to hold a query before every key of its segment";
    Tensor d_c = Tensor::zeros({rows, 3 * D}, DType::f32, h);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t d = 0; d < D; ++d) {
        d_c.f32()[r * 3 * D + d] = dq.f32()[r * D + d];
        d_c.f32()[r * 3 * D + D + d] = dk.f32()[r * D + d];
        d_c.f32()[r * 3 * D + 2 * D + d] = dv.f32()[r * D + d];
      }
    const Tensor seg_d = Tensor::from_host(seg).to(x), q_d = Tensor::from_host(is_q).to(x),
                 k_d = Tensor::from_host(is_k).to(x), len_d = Tensor::from_host(key_len).to(x),
                 pos_d = Tensor::from_host(pos).to(x);
    for (const bool all_flagged : {false, true}) {
      SCOPED_TRACE(all_flagged ? "all_flagged" : "flags read");
      ops::cuda::VarlenAttention va;
      va.segments = static_cast<int64_t>(sides.size()), va.max_len = 281, va.rows = rows, va.C = D, va.H = 1;
      va.seg = seg_d.data<int32_t>(), va.is_query = q_d.data<int32_t>(), va.is_key = k_d.data<int32_t>();
      va.key_len = len_d.data<int32_t>(), va.pos = pos_d.data<int32_t>(), va.all_flagged = all_flagged;
      std::vector<Tensor> runs[2];
      for (auto& r : runs) {
        const Tensor qd = qkv.to(DType::bf16).to(x), gd = dout.to(DType::bf16).to(x);
        Tensor o = out(x, {rows, D}, DType::bf16), l = out(x, {1, rows}), dqkv = Tensor::zeros({rows, 3 * D}, DType::bf16, x);
        poison(o, x);
        poison(l, x);
        ops::cuda::varlen_attention_forward(x, va, qd, o, l);
        ops::cuda::varlen_attention_backward(x, va, dqkv, gd, qd, o, l);
        r = {o.to(h).to(DType::f32), l.to(h), dqkv.to(h).to(DType::f32)};
      }
      for (int i = 0; i < 3; ++i) EXPECT_TRUE(bitwise_equal(runs[0][i], runs[1][i])) << "output " << i << " differs between two runs";
      const Tensor &o = runs[0][0], &l = runs[0][1], &d = runs[0][2];
      for (size_t b = 0; b + 1 < seg.size(); ++b)
        for (int32_t r = seg[b]; r < seg[b + 1]; ++r) {
          ASSERT_FALSE(std::isnan(l.f32()[r])) << "lse row " << r << " never written";
          for (int64_t e = 0; e < D; ++e) ASSERT_FALSE(std::isnan(o.f32()[r * D + e])) << "out row " << r << " never written";
          if (is_q[r] && !std::isinf(l_c.f32()[r])) {
            ASSERT_NEAR(l.f32()[r], l_c.f32()[r], 2e-2 * (1.0 + std::fabs(l_c.f32()[r]))) << "lse row " << r;
            continue;
          }
          ASSERT_EQ(l.f32()[r], -INFINITY) << "row " << r << ": no key";
          for (int64_t e = 0; e < D; ++e) ASSERT_EQ(o.f32()[r * D + e], 0.f) << "row " << r << ": no key";
        }
      EXPECT_LE(rel_l2(o, o_c), 1e-2) << "out";
      EXPECT_LE(rel_l2(d, d_c), 3e-2) << "dqkv";
    }
  }
#endif
}

TEST_P(BackendOps, AttentionRefusesHeadDimsWithoutKernels) {
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "the CPU reference takes any head dim";
  Ctx& x = ctx();
  const ops::AttentionShape s{1, 5, 24, 2};  // D = 12
  Tensor q = Tensor::zeros({1, 5, 72}, DType::f32, x), o = out(x, {1, 5, 24}), l = out(x, {1, 2, 5});
  EXPECT_THROW(ops::attention_forward(x, {o, l, q, s}), BackendError);
}

// Block top-k on bf16 tensors (head dims 64 and 128: the packed path on the
// tensor-core varlen kernels) against the CPU's f32 reference on the
// bf16-rounded inputs, class B (attention backward 3e-2); the key sets
// exactly (chosen on the widened values on both); two runs bitwise equal;
// outputs poisoned first. Key sets without the block packing (local) have no
// bf16 kernel: refused with BackendError.
TEST_P(BackendOps, BlockTopkBf16AgreesWithTheCpuOnRoundedInputs) {
  if (GetParam() == DeviceKind::cpu) GTEST_SKIP() << "the CPU's bf16 path is the f32 one (routed_attention_test)";
  Ctx& x = ctx();
  Ctx& h = host_ctx();
  for (const auto& [T, D, block, topk] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {300, 64, 64, 2}, {257, 128, 32, 8}, {1000, 64, 16, 1}}) {
    SCOPED_TRACE(::testing::Message() << "T=" << T << " D=" << D << " block=" << block << " top" << topk);
    Rng rng(0xb7 + T);
    std::vector<Tensor> in;
    for (int i = 0; i < 4; ++i) in.push_back(randn({T, D}, rng).to(DType::bf16).to(DType::f32));  // q k v dout
    const ops::KeySets ks_c = ops::block_topk_keysets(h, in[0], in[1], block, topk);
    Tensor o_c = Tensor::zeros({T, D}, DType::f32, h), lse_c = Tensor::zeros({T}, DType::f32, h);
    Tensor dq_c = Tensor::zeros({T, D}, DType::f32, h), dk_c = Tensor::zeros({T, D}, DType::f32, h),
           dv_c = Tensor::zeros({T, D}, DType::f32, h);
    ops::sparse_attention_forward(h, {o_c, lse_c, in[0], in[1], in[2], ks_c});
    ops::sparse_attention_backward(h, {dq_c, dk_c, dv_c, in[3], o_c, lse_c, in[0], in[1], in[2], ks_c});
    std::vector<Tensor> runs[2];
    for (auto& r : runs) {
      std::vector<Tensor> d;
      for (const Tensor& t : in) d.push_back(t.to(DType::bf16).to(x));
      const ops::KeySets ks = ops::block_topk_keysets(x, d[0], d[1], block, topk);
      ASSERT_TRUE(ks.blocks.defined()) << "no block packing: the bf16 kernels would not run";
      Tensor o = out(x, {T, D}, DType::bf16), lse = out(x, {T}), dq = out(x, {T, D}, DType::bf16),
             dk = out(x, {T, D}, DType::bf16), dv = out(x, {T, D}, DType::bf16);
      poison(o, x);
      poison(lse, x);
      for (Tensor* g : {&dq, &dk, &dv}) g->zero(x);
      ops::sparse_attention_forward(x, {o, lse, d[0], d[1], d[2], ks});
      ops::sparse_attention_backward(x, {dq, dk, dv, d[3], o, lse, d[0], d[1], d[2], ks});
      r = {o.to(h).to(DType::f32), lse.to(h), dq.to(h).to(DType::f32), dk.to(h).to(DType::f32),
           dv.to(h).to(DType::f32), ks.off.to(h), ks.idx.to(h)};
    }
    expect_bf16_runs(runs, {o_c, lse_c, dq_c, dk_c, dv_c}, ks_c);  // (every query sees itself: no -inf)
  }
  const int64_t T = 40, D = 64;
  Tensor q = Tensor::zeros({T, D}, DType::bf16, x), o = out(x, {T, D}, DType::bf16), lse = out(x, {T});
  EXPECT_THROW(ops::sparse_attention_forward(x, {o, lse, q, q, q, ops::local_keysets(x, T, 8)}), BackendError);
}

// The control for the routed attention cases: the attention with one key
// taken out of the only cluster, against the reference on the whole cluster,
// is far outside class F, so those cases would catch a kernel that loses (or
// adds) one pair; the same clusters on both agree.
TEST_P(BackendOps, RoutedAttentionToleranceCatchesOneMissingPair) {
  const int64_t T = 40, D = 16;
  Rng rng(0xc0de);
  const Tensor q = randn({T, D}, rng), k = randn({T, D}, rng), v = randn({T, D}, rng), g = randn({T, D}, rng);
  std::vector<int32_t> all, fewer;
  for (int32_t t = 0; t < T; ++t) {
    all.push_back(t);
    if (t != 17) fewer.push_back(t);
  }
  auto run = [&](Ctx& x, const std::vector<int32_t>& keys) {
    auto on = [&x](ops::Route r) {
      for (Tensor* t : {&r.group, &r.weight, &r.slot, &r.count, &r.offset})
        if (t->defined()) *t = t->to(x);
      return r;
    };
    const ops::Clusters cl{on(one_cluster(T, all)), on(one_cluster(T, keys))};
    Tensor o = out(x, {T, D}), lse = out(x, {T}), dq = Tensor::zeros({T, D}, DType::f32, x),
           dk = Tensor::zeros({T, D}, DType::f32, x), dv = Tensor::zeros({T, D}, DType::f32, x);
    const Tensor qd = q.to(x), kd = k.to(x), vd = v.to(x), gd = g.to(x);
    ops::KeySets ks;
    ops::routed_attention_forward(x, {o, lse, ks, qd, kd, vd, cl});
    ops::routed_attention_backward(x, {dq, dk, dv, gd, o, lse, qd, kd, vd, ks, cl});
    return std::vector<Tensor>{o.to(host_ctx()), dk.to(host_ctx())};
  };
  const std::vector<Tensor> want = run(host_ctx(), all), same = run(ctx(), all), fewer_keys = run(ctx(), fewer);
  EXPECT_LE(rel_l2(same[0], want[0]), 1e-5);
  EXPECT_LE(rel_l2(same[1], want[1]), 1e-5);
  EXPECT_GT(rel_l2(fewer_keys[0], want[0]), 1e-5) << "one pair fewer in o";
  EXPECT_GT(rel_l2(fewer_keys[1], want[1]), 1e-5) << "one pair fewer in dk";
}

// The control for the sparse attention cases: one key taken out of one
// query's window is far outside class F in o (that query) and dk (that key),
// so the cases above would catch a kernel that loses or adds one pair.
TEST_P(BackendOps, SparseAttentionToleranceCatchesOneMissingPair) {
  const int64_t T = 40, D = 16, w = 8;
  Rng rng(0x5a);
  const Tensor q = randn({T, D}, rng), k = randn({T, D}, rng), v = randn({T, D}, rng), g = randn({T, D}, rng);
  auto run = [&](Ctx& x, bool fewer) {
    ops::KeySetsBuilder b;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> keys;
      for (int64_t u = std::max<int64_t>(0, t - w + 1); u <= t; ++u)
        if (!(fewer && t == 30 && u == 25)) keys.push_back(static_cast<int32_t>(u));
      b.add_query(keys);
    }
    const ops::KeySets ks = b.build(x);
    Tensor o = out(x, {T, D}), lse = out(x, {T}), dq = Tensor::zeros({T, D}, DType::f32, x),
           dk = Tensor::zeros({T, D}, DType::f32, x), dv = Tensor::zeros({T, D}, DType::f32, x);
    const Tensor qd = q.to(x), kd = k.to(x), vd = v.to(x), gd = g.to(x);
    ops::sparse_attention_forward(x, {o, lse, qd, kd, vd, ks});
    ops::sparse_attention_backward(x, {dq, dk, dv, gd, o, lse, qd, kd, vd, ks});
    return std::vector<Tensor>{o.to(host_ctx()), dk.to(host_ctx())};
  };
  const std::vector<Tensor> want = run(host_ctx(), false), same = run(ctx(), false), fewer = run(ctx(), true);
  EXPECT_LE(rel_l2(same[0], want[0]), 1e-5);
  EXPECT_LE(rel_l2(same[1], want[1]), 1e-5);
  EXPECT_GT(rel_l2(fewer[0], want[0]), 1e-5) << "one pair fewer in o";
  EXPECT_GT(rel_l2(fewer[1], want[1]), 1e-5) << "one pair fewer in dk";
}

}  // namespace sy::op_test
