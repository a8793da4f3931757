// Local, block top-k and routed attention: causality, equivalences with dense
// attention, the log-sum-exp merge, gradients and the centroid EMA.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "attention_rows.h"
#include "cuda_fixture.h"
#include "grad_check.h"
#include "ops/cuda/routed_attention_rows.h"  // centroid_dot: the kernel's exact score
#include "ops/layernorm.h"
#include "ops/rope.h"
#include "ops/routed_attention.h"
#include "runtime/sparse_self_attention.h"

namespace sy {
namespace {

using ops::KeySets;

switchyard::AttentionConfig routed_cfg(int routing_heads, int clusters, int window, bool balanced = false) {
  switchyard::AttentionConfig a;
  a.set_kind(switchyard::AttentionConfig::ROUTED);
  a.set_num_routing_heads(routing_heads);
  a.set_num_clusters(clusters);
  a.set_window(window);
  if (balanced) a.set_assignment(switchyard::AttentionConfig::BALANCED);
  return a;
}

switchyard::AttentionConfig block_cfg(int block, int topk) {
  switchyard::AttentionConfig a;
  a.set_kind(switchyard::AttentionConfig::BLOCK_TOPK);
  a.set_block_size(block);
  a.set_topk_blocks(topk);
  return a;
}

// A layer on ctx's device (the host by default); forward takes and returns
// host tensors.
struct Layer {
  Ctx& ctx;
  ParamStore ps;
  std::unique_ptr<SparseSelfAttention> attn;
  Layer(const switchyard::AttentionConfig& a, int64_t C, int64_t H, int64_t T, uint64_t seed = 1,
        const AttentionOptions& options = {}, Ctx& on = host_ctx())
      : ctx(on) {
    Rng rng(seed);
    attn = std::make_unique<SparseSelfAttention>(ctx, ps, "a", C, H, SparseAttentionSpec{a, T, nullptr, 3}, rng,
                                                 0.5f, 0.5f, options);
    ps.finalize(ctx);
  }
  Tensor forward(const Tensor& x, int64_t B, int64_t T) { return attn->forward(x.to(ctx), B, T).to(host_ctx()); }
};

// Initialises the layer's centroids by k-means on a warm-up batch (an
// evaluation-mode forward), as the trainer does before its first step.
void calibrate(Layer& l, const Tensor& warmup, int64_t B, int64_t T) {
  l.attn->set_training(false);
  l.attn->calibrate_next_forward();
  l.forward(warmup, B, T);
}

// Token j's change at x2 is seen by outputs at i < j: count them.
int count_leaks(const Tensor& y, const Tensor& y0, int64_t j, int64_t C) {
  int leaks = 0;
  for (int64_t i = 0; i < j * C; ++i) leaks += y.f32()[i] != y0.f32()[i];
  return leaks;
}

// Changing token j changes no output at i < j, in evaluation mode and in
// training mode (where the forward also gathers the centroid statistics).
// C = 8: heads of 4 (any head dim on the CPU); the GPU's kernels take 16, 32,
// 64 or 128, so its cases pass C = 32.
void expect_causal(const switchyard::AttentionConfig& a, Ctx& ctx = host_ctx(), int64_t C = 8) {
  const int64_t H = 2, T = 24;
  for (bool training : {false, true}) {
    SCOPED_TRACE(training ? "training" : "evaluation");
    Layer l(a, C, H, T, 1, {}, ctx);
    Rng rng(2);
    calibrate(l, testing::randn({T, C}, rng), 1, T);
    l.attn->set_training(training);
    Tensor x = testing::randn({T, C}, rng);
    Tensor y0 = l.forward(x, 1, T);
    for (int64_t j = 1; j < T; j += 3) {
      Tensor x2 = x.clone();
      for (int64_t c = 0; c < C; ++c) x2.f32()[j * C + c] += static_cast<float>(rng.normal() * 2);
      EXPECT_EQ(count_leaks(l.forward(x2, 1, T), y0, j, C), 0) << "token " << j << " leaked";
    }
  }
}

TEST(LocalAttention, NoLeakFromTheFuture) { expect_causal(routed_cfg(0, 1, 5)); }
TEST(RoutedAttention, CausalModeNoLeakFromTheFuture) { expect_causal(routed_cfg(2, 4, 3)); }
TEST(RoutedAttention, LocalPlusRoutingNoLeak) { expect_causal(routed_cfg(1, 3, 4)); }
TEST(BlockTopK, NoLeakFromTheFuture) { expect_causal(block_cfg(4, 2)); }

// The controls: the check above catches the two ways the centroids can leak.
// (1) k-means on the batch the loss sees (the old first step): with centroids
// chosen from x2, token j moves the clusters earlier tokens join.
TEST(RoutedAttention, CausalModeLeaksWhenCentroidsComeFromTheSameBatch) {
  const int64_t C = 8, H = 2, T = 24;
  Rng rng(2);
  const Tensor x = testing::randn({T, C}, rng);
  int leaks = 0;
  for (int64_t j = 1; j < T; j += 3) {
    Layer l0(routed_cfg(2, 4, 3), C, H, T), l2(routed_cfg(2, 4, 3), C, H, T);
    Tensor x2 = x.clone();
    for (int64_t c = 0; c < C; ++c) x2.f32()[j * C + c] += static_cast<float>(rng.normal() * 2);
    calibrate(l0, x, 1, T);
    calibrate(l2, x2, 1, T);
    l0.attn->set_training(true);
    l2.attn->set_training(true);
    leaks += count_leaks(l2.attn->forward(x2, 1, T), l0.attn->forward(x, 1, T), j, C);
  }
  EXPECT_GT(leaks, 0);
}

// (2) an EMA update from the batch before it is used (what updating inside
// the forward does to the next layer with shared centroids): after an
// update from x2, earlier tokens' outputs depend on token j.
void expect_ema_leaks(Ctx& ctx) {
  const int64_t C = 8, H = 2, T = 24;
  auto a = routed_cfg(2, 4, 3);
  a.set_ema_decay(0.5f);
  Rng rng(2);
  const Tensor w = testing::randn({T, C}, rng), x = testing::randn({T, C}, rng);
  int leaks = 0;
  for (int64_t j = 1; j < T; j += 3) {
    Layer l0(a, C, H, T, 1, {}, ctx), l2(a, C, H, T, 1, {}, ctx);
    Tensor x2 = x.clone();
    for (int64_t c = 0; c < C; ++c) x2.f32()[j * C + c] += static_cast<float>(rng.normal() * 2);
    calibrate(l0, w, 1, T);
    calibrate(l2, w, 1, T);
    l0.attn->set_training(true);
    l2.attn->set_training(true);
    l0.forward(x, 1, T);
    l0.attn->update_centroids();
    l2.forward(x2, 1, T);
    l2.attn->update_centroids();
    leaks += count_leaks(l2.forward(x2, 1, T), l0.forward(x, 1, T), j, C);
  }
  EXPECT_GT(leaks, 0);
}

TEST(RoutedAttention, CausalModeLeaksWhenTheEmaSeesTheSameBatch) { expect_ema_leaks(host_ctx()); }

TEST(RoutedAttention, TrainingBeforeCalibrationIsRefused) {
  Layer l(routed_cfg(2, 4, 3), 8, 2, 24);
  Rng rng(2);
  EXPECT_THROW(l.attn->forward(testing::randn({24, 8}, rng), 1, 24), Error);
}

// The paper's balanced clusters take each centroid's top T/k tokens over the
// whole sequence, so a later token can change an earlier token's output.
void expect_balanced_leaks(Ctx& ctx) {
  const int64_t C = 8, H = 2, T = 24;
  Layer l(routed_cfg(2, 4, 3, true), C, H, T, 1, {}, ctx);
  Rng rng(4);
  Tensor x = testing::randn({T, C}, rng);
  calibrate(l, testing::randn({T, C}, rng), 1, T);
  Tensor y0 = l.forward(x, 1, T);
  int leaks = 0;
  for (int64_t j = T / 2; j < T; ++j) {
    Tensor x2 = x.clone();
    for (int64_t c = 0; c < C; ++c) x2.f32()[j * C + c] *= -3.f;
    Tensor y = l.forward(x2, 1, T);
    for (int64_t i = 0; i < j * C; ++i) leaks += y.f32()[i] != y0.f32()[i];
  }
  EXPECT_GT(leaks, 0);
}

TEST(RoutedAttention, BalancedModeMembershipDependsOnLaterTokens) { expect_balanced_leaks(host_ctx()); }

// A layer of dense causal attention and a sparse one, same weights (and the
// same options: with RoPE both rotate q and k the same way).
void expect_equals_dense(const switchyard::AttentionConfig& a, const AttentionOptions& options = {}) {
  const int64_t C = 8, H = 2, T = 13, B = 2;
  Layer sparse(a, C, H, T, 5, options);
  ParamStore ps;
  Rng rng(5);
  CausalSelfAttention dense(host_ctx(), ps, "a", C, H, rng, 0.5f, 0.5f, options);
  ps.finalize(host_ctx());
  Rng in(6);
  Tensor x = testing::randn({B * T, C}, in);
  calibrate(sparse, x, B, T);
  sparse.attn->set_training(true);
  Tensor ys = sparse.attn->forward(x, B, T), yd = dense.forward(x, B, T);
  for (int64_t i = 0; i < ys.numel(); ++i) EXPECT_NEAR(ys.f32()[i], yd.f32()[i], 1e-5f) << i;
  EXPECT_NEAR(sparse.attn->stats().pair_fraction, 1.0, 1e-12);
}

TEST(RoutedAttention, OneClusterEqualsDenseCausalAttention) { expect_equals_dense(routed_cfg(2, 1, 1)); }
TEST(LocalAttention, WindowAtLeastNEqualsDense) { expect_equals_dense(routed_cfg(0, 1, 13)); }
TEST(BlockTopK, AllBlocksEqualsDense) { expect_equals_dense(block_cfg(4, 100)); }

AttentionOptions rope_options(bool bias = true) {
  AttentionOptions o;
  o.rope = true;
  o.rope_base = 100.0;
  o.bias = bias;
  return o;
}
TEST(RoutedAttention, OneClusterEqualsDenseWithRope) { expect_equals_dense(routed_cfg(2, 1, 1), rope_options()); }
TEST(LocalAttention, WindowAtLeastNEqualsDenseWithRopeNoBias) {
  expect_equals_dense(routed_cfg(0, 1, 13), rope_options(false));
}

// RoPE comes before clustering: with no k-means iterations the warm-up
// centroids are rows of the routing head's normalised queries, and those
// queries are the rotated ones, LN(rope(q)), not LN(q).
TEST(RoutedAttention, RopeRotatesQueriesBeforeClustering) {
  const int64_t C = 8, H = 2, T = 12, D = C / H;
  auto cfg = routed_cfg(1, 4, 3);
  cfg.set_kmeans_iters(0);
  Layer l(cfg, C, H, T, 7, rope_options());
  Rng rng(8);
  Tensor x = testing::randn({T, C}, rng);
  calibrate(l, x, 1, T);
  // q of the routing head (head 1) for every row, by hand: x Wqkv + b, columns [D, 2D).
  const float* w = l.ps.find("a.qkv.w")->value.f32();
  const float* b = l.ps.find("a.qkv.b")->value.f32();
  Tensor q = testing::zeros({T, D});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < D; ++j) {
      float v = b[D + j];
      for (int64_t c = 0; c < C; ++c) v += x.f32()[t * C + c] * w[c * 3 * C + D + j];
      q.f32()[t * D + j] = v;
    }
  auto normalised = [&](bool rotate) {
    Tensor r = q.clone(), y = testing::zeros({T, D}), m = testing::zeros({T}), s = testing::zeros({T});
    if (rotate) ops::rope_forward(host_ctx(), {r, Tensor(), T, 1, D, 100.0});
    ops::layernorm_forward(host_ctx(), {y, m, s, r, Tensor(), Tensor()});
    return y;
  };
  const Tensor rotated = normalised(true), plain = normalised(false);
  auto row_of = [&](const Tensor& rows, const float* mu) {  // the row mu equals, or -1
    for (int64_t t = 0; t < T; ++t) {
      double d = 0;
      for (int64_t j = 0; j < D; ++j) d = std::max(d, static_cast<double>(std::fabs(rows.f32()[t * D + j] - mu[j])));
      if (d < 1e-3) return t;
    }
    return int64_t{-1};
  };
  const ops::Centroids& c = l.attn->centroids()[0];
  int later = 0;
  for (int64_t k = 0; k < c.K; ++k) {
    const int64_t t = row_of(rotated, c.mu.f32() + k * D);
    EXPECT_GE(t, 0) << "centroid " << k << " is no rotated, normalised query";
    if (t > 0) {
      ++later;
      EXPECT_EQ(row_of(plain, c.mu.f32() + k * D), -1) << "centroid " << k << " matches an unrotated query";
    }
  }
  EXPECT_GT(later, 0);
}

// Members of each cluster of a Route (in position order): item i is in
// cluster c when one of its assignments to c was kept.
std::vector<std::vector<int32_t>> members(const ops::Route& r) {
  std::vector<std::vector<int32_t>> m(r.num_groups);
  const std::vector<int32_t> group = r.group.to_vector<int32_t>(), slot = r.slot.to_vector<int32_t>();
  for (int64_t a = 0; a < r.assignments(); ++a)
    if (group[a] >= 0 && slot[a] >= 0) m[group[a]].push_back(static_cast<int32_t>(a / r.k));
  return m;
}

// Brute-force union of a query's clusters' allowed keys.
KeySets union_keys(const ops::Clusters& cl, int64_t T) {
  const auto queries = members(cl.queries), keys_of = members(cl.keys);
  ops::KeySetsBuilder ks;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> keys;
    bool member = false;
    for (int64_t c = 0; c < cl.num(); ++c) {
      if (std::find(queries[c].begin(), queries[c].end(), t) == queries[c].end()) continue;
      member = true;
      for (int32_t u : keys_of[c])
        if (u <= t && std::find(keys.begin(), keys.end(), u) == keys.end()) keys.push_back(u);
    }
    if (member && keys.empty()) keys.push_back(static_cast<int32_t>(t));
    std::sort(keys.begin(), keys.end());
    ks.add_query(keys);
  }
  return ks.build(host_ctx());
}

// One head of one sequence: q, k, v contiguous (T, D).
struct Head {
  int64_t T, D;
  Tensor q, k, v;
};

Head random_head(int64_t T, int64_t D, Rng& rng) {
  return {T, D, testing::randn({T, D}, rng), testing::randn({T, D}, rng), testing::randn({T, D}, rng)};
}

ops::Clusters balanced_clusters(const Head& h, int64_t K, Rng& rng) {
  Ctx& ctx = host_ctx();
  ops::Centroids c(K, h.D, ctx);
  Tensor qn = testing::zeros({h.T, h.D}), kn = testing::zeros({h.T, h.D}), m = testing::zeros({h.T}),
         r = testing::zeros({h.T});
  ops::layernorm_forward(ctx, {qn, m, r, h.q, Tensor(), Tensor()});
  ops::layernorm_forward(ctx, {kn, m, r, h.k, Tensor(), Tensor()});
  ops::kmeans_init(ctx, c, qn, 2, rng);
  ops::ClusterParams p;
  p.mode = ops::ClusterMode::balanced;
  ops::Clusters cl;
  ops::assign_clusters(ctx, cl, qn, kn, c, p);
  return cl;
}

// One cluster (K = 1) over T tokens with the given members: a threshold route.
ops::Route one_cluster(int64_t T, const std::vector<int32_t>& in) {
  std::vector<float> score(T, 0.f);
  for (int32_t t : in) score[t] = 1.f;
  ops::Route r;
  ops::threshold_route(host_ctx(), r, Tensor::from_host(score), 0.5f);
  return r;
}

TEST(RoutedAttention, LseMergeEqualsAttentionOverTheUnion) {
  Ctx& ctx = host_ctx();
  Rng rng(7);
  for (int trial = 0; trial < 5; ++trial) {
    Head h = random_head(37, 6, rng);
    ops::Clusters cl = balanced_clusters(h, 5, rng);  // S = 8: tokens in 0..5 clusters
    int multi = 0;
    const auto queries = members(cl.queries);
    for (int64_t t = 0; t < h.T; ++t) {
      int n = 0;
      for (auto& q : queries) n += std::count(q.begin(), q.end(), t);
      multi += n > 1;
    }
    ASSERT_GT(multi, 0) << "want queries in several clusters";
    Tensor o = testing::zeros({h.T, h.D}), o2 = testing::zeros({h.T, h.D});
    o.fill(NAN), o2.fill(NAN);  // poison
    Tensor lse_t = testing::zeros({h.T}), lse2_t = testing::zeros({h.T});
    KeySets ks;
    ops::routed_attention_forward(ctx, {o, lse_t, ks, h.q, h.k, h.v, cl});
    KeySets want = union_keys(cl, h.T);
    EXPECT_EQ(ks.idx.to_vector<int32_t>(), want.idx.to_vector<int32_t>());
    EXPECT_EQ(ks.off.to_vector<int64_t>(), want.off.to_vector<int64_t>());
    ops::sparse_attention_forward(ctx, {o2, lse2_t, h.q, h.k, h.v, want});
    for (int64_t i = 0; i < o.numel(); ++i) ASSERT_NEAR(o.f32()[i], o2.f32()[i], 1e-5f);
    const float* lse = lse_t.f32();
    const float* lse2 = lse2_t.f32();
    for (int64_t t = 0; t < h.T; ++t)
      if (std::isfinite(lse2[t])) EXPECT_NEAR(lse[t], lse2[t], 1e-5f);
      else EXPECT_EQ(lse[t], lse2[t]);
  }
}

// options.bf16 in a sparse layer with a head dim of 64: a routed layer's
// local head and routing head (causal and balanced mode), and block top-k's
// heads, on bf16 q, k, v. Same parameters and centroids as the fp32 layer
// (clusters and blocks chosen from f32 values in both), so y and dx differ
// by rounding only: class B, and not zero (measured, causal routed: y 0.4%,
// dx 0.5%; a dropped routing-head dq moves dx by 36%, dropped local-head
// gradients by 75%).
TEST(RoutedAttention, Bf16LayerAgreesWithFp32ToClassB) {
  const int64_t C = 128, H = 2, T = 48, B = 2;
  for (const auto& [name, cfg] : std::vector<std::pair<std::string, switchyard::AttentionConfig>>{
           {"routed causal", routed_cfg(1, 4, 16)},
           {"routed balanced", routed_cfg(1, 4, 16, true)},
           {"block top-k", block_cfg(16, 2)}}) {
    SCOPED_TRACE(name);
    Rng rng(10);
    // Inputs of std 0.3 keep the logits (weights of std 0.5 over C = 128) near
    // 3 rather than 30: a softmax that sharp turns bf16's input rounding into
    // 4-5% of dx on dense attention alone.
    auto small = [&] { return testing::randn({B * T, C}, rng, 0.3f); };
    const Tensor warm = small(), x = small(), dy = testing::randn({B * T, C}, rng);
    AttentionOptions bf16;
    bf16.bf16 = true;
    std::vector<Tensor> got[2];
    for (int m = 0; m < 2; ++m) {
      Layer l(cfg, C, H, T, 1, m ? bf16 : AttentionOptions{});
      calibrate(l, warm, B, T);
      l.attn->set_training(true);
      const Tensor y = l.forward(x, B, T);
      got[m] = {y, l.attn->backward(dy.to(l.ctx)).to(host_ctx())};
    }
    const double ey = testing::rel_l2(got[1][0], got[0][0]), edx = testing::rel_l2(got[1][1], got[0][1]);
    EXPECT_GT(ey, 0.0) << "nothing was rounded";
    EXPECT_LT(ey, 1e-2) << "y";
    EXPECT_GT(edx, 0.0);
    EXPECT_LT(edx, 2e-2) << "dx";
  }
}

// bf16 outputs (o, lse, dq, dk, dv) against the f32 path's on the same
// values: o and the gradients its values rounded, lse its own, bit for bit.
void expect_rounded_f32_path(const std::vector<Tensor>& got, const std::vector<Tensor>& f32_path) {
  auto values = [](const Tensor& t) { return t.to(DType::f32).to_vector<float>(); };
  auto rounded = [](const Tensor& t) { return t.to(DType::bf16).to(DType::f32).to_vector<float>(); };
  EXPECT_EQ(values(got[0]), rounded(f32_path[0])) << "o";
  EXPECT_EQ(got[1].to_vector<float>(), f32_path[1].to_vector<float>()) << "lse";
  EXPECT_EQ(values(got[2]), rounded(f32_path[2])) << "dq";
  EXPECT_EQ(values(got[3]), rounded(f32_path[3])) << "dk";
  EXPECT_EQ(values(got[4]), rounded(f32_path[4])) << "dv";
}

// bf16 tensors (CUDA's tensor-core path) on the CPU: the f32 path on their
// values, o and the gradients rounded (gradients as bf16(g + gradient)), bit
// for bit, with one cluster per token and with several (balanced); refused
// where CUDA has no bf16 path (head dims other than 64 and 128) and for
// mixed dtypes.
TEST(RoutedAttention, Bf16TensorsRunTheF32PathRoundedOrAreRefused) {
  Ctx& ctx = host_ctx();
  Rng rng(9);
  const int64_t T = 40, D = 64;
  Head h = random_head(T, D, rng);
  const Tensor g = testing::randn({T, D}, rng);
  std::vector<int32_t> q_members, k_members;
  for (int32_t t = 0; t < T; ++t) {
    if (t % 7 != 3) q_members.push_back(t);
    if (t % 5 != 0) k_members.push_back(t);  // query 0 has no key: itself
  }
  ops::Clusters cl;
  cl.queries = one_cluster(T, q_members);
  cl.keys = one_cluster(T, k_members);
  auto b16 = [](const Tensor& t) { return t.to(DType::bf16); };
  auto f32 = [](const Tensor& t) { return t.to(DType::f32); };
  const Tensor q = b16(h.q), k = b16(h.k), v = b16(h.v), dout = b16(g);
  // bf16
  Tensor o = testing::zeros({T, D}).to(DType::bf16), lse = testing::zeros({T});
  Tensor dq = b16(testing::randn({T, D}, rng)), dk = b16(testing::randn({T, D}, rng)), dv = b16(testing::randn({T, D}, rng));
  Tensor dq32 = f32(dq), dk32 = f32(dk), dv32 = f32(dv);
  KeySets ks;
  ops::routed_attention_forward(ctx, {o, lse, ks, q, k, v, cl});
  ops::routed_attention_backward(ctx, {dq, dk, dv, dout, o, lse, q, k, v, ks, cl});
  // the f32 path on the same values
  Tensor o32 = testing::zeros({T, D}), lse32 = testing::zeros({T});
  KeySets ks32;
  ops::routed_attention_forward(ctx, {o32, lse32, ks32, f32(q), f32(k), f32(v), cl});
  ops::routed_attention_backward(ctx, {dq32, dk32, dv32, f32(dout), f32(o), lse32, f32(q), f32(k), f32(v), ks32, cl});
  expect_rounded_f32_path({o, lse, dq, dk, dv}, {o32, lse32, dq32, dk32, dv32});
  EXPECT_EQ(ks.idx.to_vector<int32_t>(), ks32.idx.to_vector<int32_t>());

  // several clusters per token: the same
  const ops::Clusters several = balanced_clusters(h, 5, rng);
  Tensor ob = testing::zeros({T, D}).to(DType::bf16), lseb = testing::zeros({T}), ob32 = testing::zeros({T, D}),
         lseb32 = testing::zeros({T});
  KeySets ksb, ksb32;
  ops::routed_attention_forward(ctx, {ob, lseb, ksb, q, k, v, several});
  ops::routed_attention_forward(ctx, {ob32, lseb32, ksb32, f32(q), f32(k), f32(v), several});
  EXPECT_EQ(f32(ob).to_vector<float>(), f32(b16(ob32)).to_vector<float>());
  EXPECT_EQ(lseb.to_vector<float>(), lseb32.to_vector<float>());
  EXPECT_GT(ksb.pairs(), T) << "want the balanced clusters to hold pairs";

  // refused: head dim 32, mixed dtypes
  Head h32 = random_head(T, 32, rng);
  Tensor o16 = testing::zeros({T, 32}).to(DType::bf16);
  EXPECT_THROW(ops::routed_attention_forward(ctx, {o16, lse, ks, b16(h32.q), b16(h32.k), b16(h32.v), cl}), Error);
  EXPECT_THROW(ops::routed_attention_forward(ctx, {o32, lse, ks, q, k, h.v, cl}), Error);
}

TEST(RoutedAttention, QueryInNoClusterGetsZeroAndLoneQueryAttendsToItself) {
  Rng rng(8);
  Head h = random_head(4, 3, rng);
  ops::Clusters cl;
  cl.queries = one_cluster(4, {1, 3});
  cl.keys = one_cluster(4, {2});  // query 1 has no allowed key (2 > 1): attends to itself
  Tensor o = testing::zeros({4, 3}), lse = testing::zeros({4});
  KeySets ks;
  ops::routed_attention_forward(host_ctx(), {o, lse, ks, h.q, h.k, h.v, cl});
  for (int d = 0; d < 3; ++d) {
    EXPECT_EQ(o.f32()[0 * 3 + d], 0.f);                 // in no cluster
    EXPECT_EQ(o.f32()[1 * 3 + d], h.v.f32()[1 * 3 + d]);  // itself
    EXPECT_NEAR(o.f32()[3 * 3 + d], h.v.f32()[2 * 3 + d], 1e-6);  // its only key
  }
}

void expect_head_gradients(const KeySets& ks, Head& h, const std::string& what) {
  Ctx& ctx = host_ctx();
  Rng rng(9);
  Tensor R = testing::randn({h.T, h.D}, rng);
  auto loss = [&] {
    Tensor o = testing::zeros({h.T, h.D}), lse = testing::zeros({h.T});
    ops::sparse_attention_forward(ctx, {o, lse, h.q, h.k, h.v, ks});
    return testing::dot(o, R);
  };
  Tensor o = testing::zeros({h.T, h.D}), lse = testing::zeros({h.T});
  ops::sparse_attention_forward(ctx, {o, lse, h.q, h.k, h.v, ks});
  Tensor dq = testing::zeros({h.T, h.D}), dk = testing::zeros({h.T, h.D}), dv = testing::zeros({h.T, h.D});
  ops::sparse_attention_backward(ctx, {dq, dk, dv, R, o, lse, h.q, h.k, h.v, ks});
  testing::expect_gradient(what + " dq", h.q, dq, loss, 1e-2);
  testing::expect_gradient(what + " dk", h.k, dk, loss, 1e-2);
  testing::expect_gradient(what + " dv", h.v, dv, loss, 1e-2);
}

// bf16 tensors (CUDA's tensor-core path for block top-k) on the CPU: the
// blocks chosen on the widened values, the f32 path on them, o and the
// gradients rounded (gradients as bf16(g + gradient)), bit for bit; mixed
// dtypes refused.
TEST(SparseAttention, Bf16TensorsRunTheF32PathRounded) {
  Ctx& ctx = host_ctx();
  Rng rng(12);
  const int64_t T = 50, D = 64;
  Head h = random_head(T, D, rng);
  auto b16 = [](const Tensor& t) { return t.to(DType::bf16); };
  auto f32 = [](const Tensor& t) { return t.to(DType::f32); };
  const Tensor q = b16(h.q), k = b16(h.k), v = b16(h.v), dout = b16(testing::randn({T, D}, rng));
  const KeySets ks = ops::block_topk_keysets(ctx, q, k, 8, 2), ks32 = ops::block_topk_keysets(ctx, f32(q), f32(k), 8, 2);
  EXPECT_EQ(ks.off.to_vector<int64_t>(), ks32.off.to_vector<int64_t>());
  EXPECT_EQ(ks.idx.to_vector<int32_t>(), ks32.idx.to_vector<int32_t>());
  Tensor o = testing::zeros({T, D}).to(DType::bf16), lse = testing::zeros({T});
  Tensor dq = b16(testing::randn({T, D}, rng)), dk = b16(testing::randn({T, D}, rng)), dv = b16(testing::randn({T, D}, rng));
  Tensor dq32 = f32(dq), dk32 = f32(dk), dv32 = f32(dv), o32 = testing::zeros({T, D}), lse32 = testing::zeros({T});
  ops::sparse_attention_forward(ctx, {o, lse, q, k, v, ks});
  ops::sparse_attention_backward(ctx, {dq, dk, dv, dout, o, lse, q, k, v, ks});
  ops::sparse_attention_forward(ctx, {o32, lse32, f32(q), f32(k), f32(v), ks32});
  ops::sparse_attention_backward(ctx, {dq32, dk32, dv32, f32(dout), f32(o), lse32, f32(q), f32(k), f32(v), ks32});
  expect_rounded_f32_path({o, lse, dq, dk, dv}, {o32, lse32, dq32, dk32, dv32});
  EXPECT_THROW(ops::sparse_attention_forward(ctx, {o32, lse, q, k, v, ks}), Error);
  EXPECT_THROW(ops::block_topk_keysets(ctx, q, h.k, 8, 2), Error);
}

TEST(SparseAttention, GradientsMatchFiniteDifferences) {
  Ctx& ctx = host_ctx();
  Rng rng(10);
  Head h = random_head(19, 4, rng);
  expect_head_gradients(ops::local_keysets(ctx, 19, 5), h, "local");
  expect_head_gradients(ops::block_topk_keysets(ctx, h.q, h.k, 4, 2), h, "block top-k");
  ops::Clusters cl = balanced_clusters(h, 3, rng);
  Tensor o = testing::zeros({19, 4}), lse = testing::zeros({19});
  KeySets ks;
  ops::routed_attention_forward(ctx, {o, lse, ks, h.q, h.k, h.v, cl});
  expect_head_gradients(ks, h, "routed (clusters fixed)");
}

TEST(SparseAttention, LayerGradientsLocalPlusRouting) {
  const int64_t C = 8, H = 2, T = 10;
  Layer l(routed_cfg(1, 2, 3), C, H, T, 11);
  Rng rng(12);
  Tensor x = testing::randn({2 * T, C}, rng), R = testing::randn({2 * T, C}, rng);
  calibrate(l, x, 2, T);  // centroids fixed from here on (evaluation mode)
  auto loss = [&] { return testing::dot(l.attn->forward(x, 2, T), R); };
  loss();
  l.ps.zero_grad(host_ctx());
  Tensor dx = l.attn->backward(R);
  for (Param* p : l.ps.all()) {
    Tensor g = p->grad.clone();
    testing::expect_gradient(p->name, p->value, g, loss, 1e-3, 3e-2);
  }
  testing::expect_gradient("x", x, dx, loss, 1e-3, 3e-2);
}

TEST(SparseAttention, LayerGradientsLocalPlusRoutingWithRope) {
  const int64_t C = 8, H = 2, T = 10;
  Layer l(routed_cfg(1, 2, 3), C, H, T, 11, rope_options(false));
  Rng rng(12);
  Tensor x = testing::randn({2 * T, C}, rng), R = testing::randn({2 * T, C}, rng);
  calibrate(l, x, 2, T);
  auto loss = [&] { return testing::dot(l.attn->forward(x, 2, T), R); };
  loss();
  l.ps.zero_grad(host_ctx());
  Tensor dx = l.attn->backward(R);
  EXPECT_EQ(l.ps.find("a.qkv.b"), nullptr);
  for (Param* p : l.ps.all()) {
    Tensor g = p->grad.clone();
    testing::expect_gradient(p->name, p->value, g, loss, 1e-3, 3e-2);
  }
  testing::expect_gradient("x", x, dx, loss, 1e-3, 3e-2);
}

TEST(Centroids, EmaUpdateMatchesHandComputedCase) {
  // K = 1, D = 2, decay 0.5. mu = (sqrt2, 0), EMA sum = mu, count = 1.
  Ctx& ctx = host_ctx();
  ops::Centroids c(1, 2, ctx);
  c.mu = Tensor::from_host(std::vector<float>{std::sqrt(2.f), 0.f}, {1, 2});
  c.sum = c.mu.clone();
  c.count = Tensor::from_host(std::vector<float>{1.f});
  c.initialized = true;
  ops::ClusterStats s(1, 2, ctx);
  s.sum = Tensor::from_host(std::vector<float>{0.f, 2.f * std::sqrt(2.f)}, {1, 2});  // two vectors (0, sqrt2)
  s.count = Tensor::from_host(std::vector<float>{2.f});
  float drift = ops::ema_update(ctx, c, s, 0.5f);
  // sum = 0.5 (sqrt2, 0) + 0.5 (0, 2 sqrt2) = (sqrt2/2, sqrt2); count = 1.5
  EXPECT_FLOAT_EQ(c.sum.f32()[0], std::sqrt(2.f) / 2);
  EXPECT_FLOAT_EQ(c.sum.f32()[1], std::sqrt(2.f));
  EXPECT_FLOAT_EQ(c.count.f32()[0], 1.5f);
  // mu = sqrt(2) * sum / |sum| = sqrt2 (1, 2) / sqrt5
  EXPECT_NEAR(c.mu.f32()[0], std::sqrt(2.f) / std::sqrt(5.f), 1e-6);
  EXPECT_NEAR(c.mu.f32()[1], 2 * std::sqrt(2.f) / std::sqrt(5.f), 1e-6);
  const float dx = c.mu.f32()[0] - std::sqrt(2.f), dy = c.mu.f32()[1];
  EXPECT_NEAR(drift, std::sqrt(dx * dx + dy * dy), 1e-6);
}

TEST(Centroids, ClusterNeverSeenKeepsItsCentroid) {
  Ctx& ctx = host_ctx();
  ops::Centroids c(2, 2, ctx);
  c.mu = Tensor::from_host(std::vector<float>{std::sqrt(2.f), 0.f, 0.f, std::sqrt(2.f)}, {2, 2});
  c.sum = c.mu.clone();
  c.count = Tensor::from_host(std::vector<float>{1.f, 1.f});
  ops::ClusterStats s(2, 2, ctx);
  s.sum = Tensor::from_host(std::vector<float>{std::sqrt(2.f), 0.f, 0.f, 0.f}, {2, 2});
  s.count = Tensor::from_host(std::vector<float>{1.f, 0.f});
  ops::ema_update(ctx, c, s, 0.9f);
  EXPECT_NEAR(c.mu.f32()[2], 0.f, 1e-6);
  EXPECT_NEAR(c.mu.f32()[3], std::sqrt(2.f), 1e-6);
}

TEST(AttentionPairs, RoutedAt4096With64ClustersIsA64thOfDense) {
  auto a = routed_cfg(4, 0, 64);
  AttentionPairs p = attention_pairs(a, 4096, 4);
  EXPECT_EQ(cluster_count(a, 4096), 64);
  // 64 clusters of 64, causal inside: 64 * 64*65/2 pairs against 4096*4097/2.
  EXPECT_NEAR(p.sparse, 64.0 * 64 * 65 / 2, 1e-6);
  EXPECT_NEAR(p.dense, 4096.0 * 4097 / 2, 1e-6);
}

// ---- the layer on the GPU (skipped without one) ----
//
// Every op of the layer runs on CUDA: the qkv and output GEMMs, layer norm,
// cluster assignment, routed attention (the tiled varlen kernels at head dim
// 16), the local heads on the dense kernels with a window, block top-k's
// heads over key sets (ops/cuda/sparse_attention_rows.h) and the centroid
// upkeep; k-means on the warm-up batch runs on a host copy. Heads of 16 (C
// 32 or 64): the dense and tiled kernels have no head dim below 16.

using RoutedAttentionCuda = testing::CudaTest;

TEST_F(RoutedAttentionCuda, CausalModeNoLeakFromTheFuture) { expect_causal(routed_cfg(2, 4, 3), gpu(), 32); }
TEST_F(RoutedAttentionCuda, LocalPlusRoutingNoLeak) { expect_causal(routed_cfg(1, 3, 4), gpu(), 32); }
TEST_F(RoutedAttentionCuda, LocalNoLeak) { expect_causal(routed_cfg(0, 1, 5), gpu(), 32); }
TEST_F(RoutedAttentionCuda, BlockTopkNoLeak) { expect_causal(block_cfg(4, 2), gpu(), 32); }

// The controls on the GPU: the check above sees a leak where there is one.
TEST_F(RoutedAttentionCuda, BalancedModeMembershipDependsOnLaterTokens) { expect_balanced_leaks(gpu()); }
TEST_F(RoutedAttentionCuda, CausalModeLeaksWhenTheEmaSeesTheSameBatch) { expect_ema_leaks(gpu()); }

// The routing heads' pair counts and commitment sums stay on the device
// until one read at the end. A balanced layer's forward then waits once
// (groups choose needs no copy back); a causal one also once per route
// (tokens choose reads its offsets back), for all heads stacked. Heads one
// at a time would add 2 (B R - 1).
TEST_F(RoutedAttentionCuda, LayerForwardReadsTheHeadsSumsOnce) {
  const int64_t C = 64, H = 4, T = 40, B = 2, R = 2;  // heads of 16
  for (const bool balanced : {true, false}) {
    SCOPED_TRACE(balanced ? "balanced" : "causal");
    switchyard::AttentionConfig cfg = routed_cfg(R, 4, 3, balanced);
    cfg.set_commitment_coef(0.25);  // (0 by default: the loss read back would be 0 whatever the sums)
    Layer l(cfg, C, H, T, 1, {}, gpu());
    Rng rng(5);
    calibrate(l, testing::randn({B * T, C}, rng), B, T);
    l.attn->set_training(true);
    const Tensor x = testing::randn({B * T, C}, rng).to(gpu());
    const int64_t before = host_waits();
    const Tensor y = l.attn->forward(x, B, T);
    const int64_t waits = host_waits() - before;
    // The sums; causal mode also reads each route's offsets back once (every
    // routing head and sequence stacked: two reads, not two per head).
    EXPECT_EQ(waits, balanced ? 1 : 3);
    EXPECT_GT(l.attn->stats().pair_fraction, 0.0);
    if (!balanced) EXPECT_GT(l.attn->stats().commitment_loss, 0.0);
  }
}

// A training step's forward and backward of the same layer on the CPU and on
// the GPU, from the same weights and centroids: y, dx and every parameter
// gradient within 1e-4 relative L2 (a chain of about ten ops, each within
// 1e-5 of the CPU; bf16 options: class B, the GPU also rounding P and dS);
// the GPU run twice gives the same bits.
struct LayerCase {
  int64_t C = 32;           // 2 heads of C / 2
  AttentionOptions options;
  float x_std = 1.f;        // inputs (bf16: smaller, for a softmax less sharp than weights of std 0.5 make it)
  double tol = 1e-4;
};
void expect_layer_matches_cpu(const switchyard::AttentionConfig& a, Ctx& gpu, const LayerCase& lc = {}) {
  const int64_t C = lc.C, H = 2, T = 40, B = 2;
  Layer cpu(a, C, H, T, 13, lc.options), cuda(a, C, H, T, 13, lc.options, gpu);
  Rng rng(14);
  const Tensor w = testing::randn({B * T, C}, rng, lc.x_std), x = testing::randn({B * T, C}, rng, lc.x_std),
               R = testing::randn({B * T, C}, rng);
  calibrate(cpu, w, B, T);
  for (size_t r = 0; r < cpu.attn->centroids().size(); ++r) {  // the CPU's centroids on both
    ops::Centroids& d = cuda.attn->centroids()[r];
    const ops::Centroids& s = cpu.attn->centroids()[r];
    d.mu.copy_from(s.mu, gpu);
    d.sum.copy_from(s.sum, gpu);
    d.count.copy_from(s.count, gpu);
    d.initialized = true;
  }
  auto step = [&](Layer& l) {
    l.attn->set_training(true);
    std::vector<Tensor> res{l.forward(x, B, T)};
    l.ps.zero_grad(l.ctx);
    res.push_back(l.attn->backward(R.to(l.ctx)).to(host_ctx()));
    for (Param* p : l.ps.all()) res.push_back(p->grad.to(host_ctx()));
    return res;
  };
  const std::vector<Tensor> want = step(cpu), got = step(cuda), again = step(cuda);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE("output " + std::to_string(i) + " (y, dx, then the parameter gradients)");
    double num = 0, den = 0;
    for (int64_t e = 0; e < want[i].numel(); ++e) {
      const double d = double(got[i].f32()[e]) - want[i].f32()[e];
      num += d * d;
      den += double(want[i].f32()[e]) * want[i].f32()[e];
    }
    EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), lc.tol);
    EXPECT_EQ(std::memcmp(got[i].raw(), again[i].raw(), got[i].nbytes()), 0) << "two GPU runs differ";
  }
}

TEST_F(RoutedAttentionCuda, LayerMatchesTheCpuAndRerunsBitwise) {
  for (bool balanced : {false, true}) {
    SCOPED_TRACE(balanced ? "balanced" : "causal");
    auto a = routed_cfg(2, 5, 3, balanced);
    a.set_commitment_coef(0.25f);  // (causal mode) its backward through the layer norm too
    expect_layer_matches_cpu(a, gpu());
  }
}

// bf16 options (head dim 64): the local head on the bf16 windowed kernels and
// the routing head (causal and balanced mode) on the bf16 varlen path, and
// block top-k's heads on it too, against the CPU's emulation (the f32 path
// on rounded values), class B.
TEST_F(RoutedAttentionCuda, Bf16LayerMatchesTheCpuToClassBAndRerunsBitwise) {
  LayerCase lc;
  lc.C = 128;
  lc.options.bf16 = true;
  lc.x_std = 0.3f;
  lc.tol = 3e-2;
  for (const auto& [name, cfg] : std::vector<std::pair<std::string, switchyard::AttentionConfig>>{
           {"routed causal", routed_cfg(1, 5, 6)},
           {"routed balanced", routed_cfg(1, 5, 6, true)},
           {"block top-k", block_cfg(4, 2)}}) {
    SCOPED_TRACE(name);
    expect_layer_matches_cpu(cfg, gpu(), lc);
  }
}

// One local head (window 6) beside one routing head; every head local; block top-k.
TEST_F(RoutedAttentionCuda, LocalAndBlockTopkLayersMatchTheCpuAndRerunBitwise) {
  {
    SCOPED_TRACE("local + routing");
    expect_layer_matches_cpu(routed_cfg(1, 5, 6), gpu());
  }
  {
    SCOPED_TRACE("local");
    expect_layer_matches_cpu(routed_cfg(0, 1, 6), gpu());
  }
  {
    SCOPED_TRACE("block top-k");
    expect_layer_matches_cpu(block_cfg(4, 2), gpu());
  }
}


// Causal mode's nearest centroid on near ties (ops/cuda/routed_attention.cu's
// nearest_clusters): each row sits midway between two centroids, so its two
// best scores differ by about 1e-3 where the scores' bf16 products err by
// ~0.1 and split bf16's by ~1e-3. The choice must still be the fp32 argmax
// of the exact dot products (routed::centroid_dot, ties to the lower
// index), computed here on the host by the same function: only the kernel's
// margin and exact rescoring get it right on every row. (A host emulation
// of the kernel's products on inputs drawn this way: the argmax of plain
// bf16 scores is another centroid on 136 of 301 rows at D 64 and 139 at
// D 128; of split bf16 scores without the margin, on 14 and 2; split's
// largest error 2.0e-4 and 2.3e-4 against eps 1.6e-2 and 3.1e-2, two
// candidates a row. Some rows tie exactly: the lower index.) The last row
// is zero (a constant row layer-normed): every score ties at 0. Head dims
// 64 and 128, 130 centroids (three chunks of 64), rows not a multiple of 64.
TEST_F(RoutedAttentionCuda, NearestCentroidIsTheExactArgmaxOnNearTies) {
  for (const int64_t D : {64, 128}) {
    SCOPED_TRACE("D " + std::to_string(D));
    const int64_t K = 130, T = 301;
    Rng rng(17 + D);
    std::vector<float> mu(K * D), x(T * D);
    auto scale_to = [&](float* v, float norm) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += double(v[d]) * v[d];
      for (int64_t d = 0; d < D; ++d) v[d] = static_cast<float>(v[d] * norm / std::sqrt(s));
    };
    for (int64_t c = 0; c < K; ++c) {
      for (int64_t d = 0; d < D; ++d) mu[c * D + d] = static_cast<float>(rng.normal());
      scale_to(&mu[c * D], std::sqrt(float(D)));  // |mu_c| = sqrt(D), as Centroids keeps them
    }
    for (int64_t i = 0; i < T; ++i) {
      const int64_t a = i % K, b = (i * 37 + 11) % K == a ? (a + 1) % K : (i * 37 + 11) % K;
      for (int64_t d = 0; d < D; ++d) x[i * D + d] = mu[a * D + d] + mu[b * D + d] + static_cast<float>(1e-4 * rng.normal());
      scale_to(&x[i * D], std::sqrt(float(D)));  // a layer-normed row
    }
    std::fill(x.begin() + (T - 1) * D, x.end(), 0.f);  // a constant row, layer-normed: every score 0, centroid 0
    std::vector<int32_t> want(T);
    for (int64_t i = 0; i < T; ++i) {
      float best = -INFINITY;
      for (int64_t c = 0; c < K; ++c) {
        const float s = D == 64 ? ops::routed::centroid_dot<64>(&x[i * D], &mu[c * D])
                                : ops::routed::centroid_dot<128>(&x[i * D], &mu[c * D]);
        if (s > best) best = s, want[i] = static_cast<int32_t>(c);
      }
    }
    Ctx& g = gpu();
    ops::Centroids cent(K, D, g);
    cent.mu.copy_from(Tensor::from_host(mu, {K, D}), g);
    cent.initialized = true;
    const Tensor xn = Tensor::from_host(x, {T, D}).to(g);
    ops::Clusters cl;
    ops::assign_clusters(g, cl, xn, xn, cent, ops::ClusterParams{});
    const std::vector<int32_t> got = cl.queries.group.to_vector<int32_t>(), keys = cl.keys.group.to_vector<int32_t>();
    int wrong = 0;
    for (int64_t i = 0; i < T; ++i) wrong += got[i] != want[i] || keys[i] != want[i];
    EXPECT_EQ(wrong, 0) << "rows whose nearest centroid is not the exact argmax, of " << T;
  }
}

}  // namespace
}  // namespace sy
