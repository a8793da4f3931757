// Routed attention over clusters a token can share (balanced mode), packed
// for the tiled varlen kernels (ops/cuda/routed_union_pack.h), without a GPU:
// the pack, count, merge and scatter steps run here on the host, and the
// varlen kernels as the CPU's sparse attention over the pairs that
// attn::MemberMask - the kernels' own mask, with positions, key prefixes and
// the first-shared rule - allows (its tiling is checked apart, in
// attention_tiles_test). Compared with the CPU reference: the packed pairs
// (plus the lone members' self pairs) exactly the union key sets, every
// packed row written once, o, lse and dq, dk, dv within 1e-5 relative L2
// (class F), and the key sets as the launcher builds them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention_rows.h"
#include "ops/cuda/attention_tiles.h"
#include "ops/cuda/routed_union_pack.h"
#include "ops/routed_attention.h"
#include "ops/sparse_attention.h"
#include "routed_clusters.h"

namespace sy {
namespace {

namespace routed = ops::routed;
using testing::Case;
using testing::clusters_of;
using testing::columns;
using testing::Grads;
using testing::HostHead;
using testing::HostRun;
using testing::one_cluster;
using testing::poisoned;
using testing::random_case;
using testing::rel_l2;

// union_pack (ops/cuda/routed_attention.cu) on the host, with poisoned buffers.
struct HostUnionPack {
  int64_t T, K, R;
  HostHead hh;
  std::vector<int32_t> seg, key_len, row_token, is_query, is_key;
  routed::UnionLayout layout;

  HostUnionPack(const Case& c, const ops::Clusters& cl)
      : T(c.q.dim(0)), K(cl.num()), R(cl.queries.rows() + cl.keys.rows()), hh(c.q, c.k, c.v, cl), seg(K + 1, -7),
        key_len(K, -7), row_token(R, -7), is_query(R, -7), is_key(R, -7),
        layout{cl.queries.offset.data<int32_t>(), cl.keys.offset.data<int32_t>()} {
    HostRun run;
    const routed::UnionRows rows{row_token.data(), is_query.data(), is_key.data()};
    run(K + 1, routed::UnionSegments{layout, K, seg.data(), key_len.data()});
    run(cl.queries.rows(), routed::UnionSideRows{hh.h.qs, hh.h.K, hh.h.W, layout, true, rows});
    run(cl.keys.rows(), routed::UnionSideRows{hh.h.ks, hh.h.K, hh.h.W, layout, false, rows});
  }

  // The varlen kernels' mask, as attention_varlen.h's launcher builds it.
  ops::attn::MemberMask mask() const {
    ops::attn::MemberMask m{is_query.data(), is_key.data(), key_len.data()};
    m.pos = row_token.data();
    m.qbits = hh.h.qs.bits;
    m.kbits = hh.h.ks.bits;
    m.words = static_cast<int>(hh.h.W);
    m.clusters = static_cast<int>(hh.h.K);
    return m;
  }

  // The pairs the mask allows, as key sets over the packed rows.
  ops::KeySets varlen_pairs() const {
    ops::KeySetsBuilder kb;
    std::vector<int32_t> keys;
    const ops::attn::MemberMask m = mask();
    for (int64_t i = 0; i < R; ++i) {
      keys.clear();
      const int64_t b = std::upper_bound(seg.begin(), seg.end(), i) - seg.begin() - 1;  // i's segment
      if (b < K) {
        const ops::attn::MemberMask mb = m.bind(static_cast<int>(b), seg[b], seg[b + 1] - seg[b]);
        for (int64_t j = seg[b]; j < seg[b + 1]; ++j)
          if (mb.ok(static_cast<int>(i - seg[b]), static_cast<int>(j - seg[b]))) keys.push_back(static_cast<int32_t>(j));
      }
      kb.add_query(keys);
    }
    return kb.build(host_ctx());
  }
};

// The launcher's count steps: per query row, then per token.
struct HostCounts {
  std::vector<int32_t> cnt, n;
  HostCounts(const routed::Head& h, int64_t query_rows) : cnt(query_rows, -7), n(h.T, -7) {
    HostRun run;
    run(query_rows, routed::CountRow{h, cnt.data()});
    run(h.T, routed::UnionCounts{h, cnt.data(), n.data()});
  }
};

void expect_matches_reference(const Case& c, const ops::Clusters& cl) {
  Ctx& ctx = host_ctx();
  const int64_t T = c.q.dim(0), D = c.q.dim(1);
  const testing::Reference ref = testing::reference(c, cl);  // the CPU's
  const Tensor &o = ref.o, &lse = ref.lse;
  const ops::KeySets& ks = ref.ks;
  const Grads& want = ref.grads;

  const HostUnionPack p(c, cl);
  const routed::Head& h = p.hh.h;
  for (int64_t r = 0; r < p.R; ++r) ASSERT_GE(p.row_token[r], 0) << "row " << r << " never written";
  EXPECT_EQ(p.seg[0], 0);
  EXPECT_EQ(p.seg[p.K], p.R);
  const HostCounts n(h, cl.queries.rows());
  // The packed pairs as token pairs, with the lone members' self pairs, are
  // exactly the union key sets; the counts agree with them.
  const ops::KeySets pairs = p.varlen_pairs();
  const std::vector<int64_t> poff = pairs.off.to_vector<int64_t>(), off = ks.off.to_vector<int64_t>();
  const std::vector<int32_t> pidx = pairs.idx.to_vector<int32_t>(), idx = ks.idx.to_vector<int32_t>();
  std::vector<std::vector<int32_t>> got_keys(T);
  for (int64_t i = 0; i < p.R; ++i)
    for (int64_t e = poff[i]; e < poff[i + 1]; ++e) got_keys[p.row_token[i]].push_back(p.row_token[pidx[e]]);
  for (int64_t t = 0; t < T; ++t) {
    if (n.n[t] == 0) got_keys[t].push_back(static_cast<int32_t>(t));
    std::sort(got_keys[t].begin(), got_keys[t].end());
    ASSERT_EQ(got_keys[t], std::vector<int32_t>(idx.begin() + off[t], idx.begin() + off[t + 1])) << "query " << t;
    EXPECT_EQ(routed::key_set_size(n.n[t]), off[t + 1] - off[t]) << "pair count of query " << t;
  }

  // forward: gather, the varlen pairs, merge
  HostRun run;
  Tensor qkv = poisoned({p.R, 3 * D});
  run(p.R * 3 * D, routed::GatherQKV<routed::F32>{c.q.f32(), c.k.f32(), c.v.f32(), p.row_token.data(), D, qkv.f32()});
  if (D % 4 == 0) {  // the same rows gathered in chunks of 4 (the device's 16-byte path)
    Tensor chunked = poisoned({p.R, 3 * D});
    run(p.R * 3 * D / 4, routed::GatherQKV<routed::F32, 4>{c.q.f32(), c.k.f32(), c.v.f32(), p.row_token.data(), D,
                                                           chunked.f32()});
    EXPECT_TRUE(std::equal(qkv.f32(), qkv.f32() + qkv.numel(), chunked.f32())) << "q k v gathered in chunks";
  }
  const Tensor qp = columns(qkv, 0, D), kp = columns(qkv, D, D), vp = columns(qkv, 2 * D, D);
  Tensor out = testing::zeros({p.R, D}), lse_p = testing::zeros({p.R});
  ops::sparse_attention_forward(ctx, {out, lse_p, qp, kp, vp, pairs});
  Tensor got_o = poisoned({T, D}), got_lse = poisoned({T});
  run(T, routed::UnionLse{h, p.layout, n.cnt.data(), n.n.data(), lse_p.f32(), got_lse.f32()});
  run(T * D, routed::UnionOut<routed::F32>{h, c.q.f32(), c.k.f32(), c.v.f32(), p.layout, n.cnt.data(), n.n.data(),
                                           out.f32(), lse_p.f32(), 1.f / std::sqrt(static_cast<float>(D)),
                                           got_o.f32(), got_lse.f32()});
  EXPECT_LE(rel_l2(got_o, o), 1e-5) << "o";
  testing::expect_lse(got_lse, lse);
  if (D % 4 == 0) {  // merged in chunks of 4 (the device's 16-byte path): the same bits
    Tensor o4 = poisoned({T, D}), lse4 = got_lse.clone();
    run(T * D / 4, routed::UnionOut<routed::F32, 4>{h, c.q.f32(), c.k.f32(), c.v.f32(), p.layout, n.cnt.data(),
                                                    n.n.data(), out.f32(), lse_p.f32(),
                                                    1.f / std::sqrt(static_cast<float>(D)), o4.f32(), lse4.f32()});
    EXPECT_EQ(0, std::memcmp(got_o.f32(), o4.f32(), got_o.nbytes())) << "o merged in chunks";
    EXPECT_EQ(0, std::memcmp(got_lse.f32(), lse4.f32(), got_lse.nbytes())) << "lse merged in chunks";
  }

  // the backward, from the reference's o and lse
  Tensor dout_p = poisoned({p.R, D}), o_p = poisoned({p.R, D}), lse_g = poisoned({p.R});
  run(p.R * D, routed::GatherGrad<routed::F32>{c.dout.f32(), o.f32(), lse.f32(), p.row_token.data(),
                                               p.is_query.data(), D, dout_p.f32(), o_p.f32(), lse_g.f32()});
  if (D % 4 == 0) {  // in chunks of 4: the same bits
    Tensor d4 = poisoned({p.R, D}), o4 = poisoned({p.R, D}), l4 = poisoned({p.R});
    run(p.R * D / 4, routed::GatherGrad<routed::F32, 4>{c.dout.f32(), o.f32(), lse.f32(), p.row_token.data(),
                                                         p.is_query.data(), D, d4.f32(), o4.f32(), l4.f32()});
    EXPECT_TRUE(std::equal(dout_p.f32(), dout_p.f32() + dout_p.numel(), d4.f32())) << "dout gathered in chunks";
    EXPECT_TRUE(std::equal(o_p.f32(), o_p.f32() + o_p.numel(), o4.f32())) << "o gathered in chunks";
    EXPECT_TRUE(std::equal(lse_g.f32(), lse_g.f32() + lse_g.numel(), l4.f32())) << "lse gathered in chunks";
  }
  Tensor dq = testing::zeros({p.R, D}), dk = testing::zeros({p.R, D}), dv = testing::zeros({p.R, D});
  ops::sparse_attention_backward(ctx, {dq, dk, dv, dout_p, o_p, lse_g, qp, kp, vp, pairs});
  Tensor dqkv = poisoned({p.R, 3 * D});
  for (int64_t i = 0; i < p.R; ++i) {
    std::copy_n(dq.f32() + i * D, D, dqkv.f32() + i * 3 * D);
    std::copy_n(dk.f32() + i * D, D, dqkv.f32() + i * 3 * D + D);
    std::copy_n(dv.f32() + i * D, D, dqkv.f32() + i * 3 * D + 2 * D);
  }
  Grads got{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
  run(T * D, routed::UnionScatter<routed::F32>{h, p.layout, n.n.data(), dqkv.f32(), c.dout.f32(), got.dq.f32(),
                                               got.dk.f32(), got.dv.f32()});
  testing::expect_grads(got, want);
  if (D % 4 == 0) {  // scattered in chunks of 4: the same bits
    Grads g4{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
    run(T * D / 4, routed::UnionScatter<routed::F32, 4>{h, p.layout, n.n.data(), dqkv.f32(), c.dout.f32(), g4.dq.f32(),
                                                        g4.dk.f32(), g4.dv.f32()});
    EXPECT_EQ(0, std::memcmp(got.dq.f32(), g4.dq.f32(), got.dq.nbytes())) << "dq scattered in chunks";
    EXPECT_EQ(0, std::memcmp(got.dk.f32(), g4.dk.f32(), got.dk.nbytes())) << "dk scattered in chunks";
    EXPECT_EQ(0, std::memcmp(got.dv.f32(), g4.dv.f32(), got.dv.nbytes())) << "dv scattered in chunks";
  }
}

ops::ClusterParams balanced() {
  ops::ClusterParams p;
  p.mode = ops::ClusterMode::balanced;
  return p;
}

TEST(RoutedUnionPack, BalancedClusters) {
  Rng rng(41);
  for (int trial = 0; trial < 3; ++trial) {
    Case c = random_case(61, 8, rng);
    expect_matches_reference(c, clusters_of(c, 5, balanced(), rng));
  }
}

// More than 64 clusters (bitmaps of several words; the first shared cluster
// can lie in a later word than another shared one), and shared key lists.
TEST(RoutedUnionPack, BalancedMoreThan64ClustersAndSharedKeys) {
  Rng rng(42);
  Case c = random_case(160, 4, rng);
  expect_matches_reference(c, clusters_of(c, 70, balanced(), rng));
  expect_matches_reference(c, clusters_of(c, 130, balanced(), rng));
  Case s = random_case(30, 5, rng);
  expect_matches_reference(s, clusters_of(s, 3, balanced(), rng, true));
}

// One cluster per token (k = 1: causal mode; the count by binary search):
// with drops, shared key lists, one cluster (dense causal), more than 64
// clusters, and lone queries.
TEST(RoutedUnionPack, CausalClustersAndLoneQueries) {
  Rng rng(43);
  ops::ClusterParams drops;
  drops.dropless = false;
  drops.capacity_factor = 0.7f;
  Case c = random_case(53, 6, rng);
  expect_matches_reference(c, clusters_of(c, 4, ops::ClusterParams{}, rng));
  const ops::Clusters dropped = clusters_of(c, 4, drops, rng);
  ASSERT_GT(dropped.queries.dropped, 0);
  ASSERT_GT(dropped.keys.dropped, 0);
  expect_matches_reference(c, dropped);
  Case s = random_case(29, 5, rng);
  expect_matches_reference(s, clusters_of(s, 3, ops::ClusterParams{}, rng, true));  // every row a query and a key
  expect_matches_reference(s, clusters_of(s, 1, ops::ClusterParams{}, rng));        // dense causal
  Case wide = random_case(160, 4, rng);
  expect_matches_reference(wide, clusters_of(wide, 70, ops::ClusterParams{}, rng));
  Case lone = random_case(6, 4, rng);  // (D 4: the chunked paths see a lone query and tokens in no cluster)
  ops::Clusters cl;
  cl.queries = one_cluster(6, {1, 3, 4});
  cl.keys = one_cluster(6, {2, 3});  // query 1: no key <= 1, itself; 0, 2, 5: in no cluster
  expect_matches_reference(lone, cl);
}

// Routes in the groups-choose layout (k = K, assignment t*K + c is cluster c)
// from each cluster's members in position order.
ops::Route groups_route(int64_t T, const std::vector<std::vector<int32_t>>& members) {
  const int64_t K = static_cast<int64_t>(members.size());
  ops::Route r;
  r.num_items = T, r.k = K, r.num_groups = K;
  std::vector<int32_t> group(T * K), slot(T * K, -1);
  r.host_offset = {0};
  for (int64_t c = 0; c < K; ++c) {
    for (int64_t t = 0; t < T; ++t) group[t * K + c] = static_cast<int32_t>(c);
    for (size_t s = 0; s < members[c].size(); ++s) slot[members[c][s] * K + c] = static_cast<int32_t>(s);
    r.host_offset.push_back(r.host_offset.back() + static_cast<int32_t>(members[c].size()));
  }
  r.group = Tensor::from_host(group), r.slot = Tensor::from_host(slot), r.offset = Tensor::from_host(r.host_offset);
  return r;
}

// A packing worked by hand: T = 4, K = 2; queries {1, 3} and {1, 2}, keys
// {0, 1} and {0, 1, 2}.
//   segment 0: rows 0-1 keys t0 t1, rows 2-3 queries t1 t3
//   segment 1: rows 4-6 keys t0 t1 t2 (t0, t1 keys of cluster 0 too: flag 2),
//              rows 7-8 queries t1 (a query of cluster 0 too: flag 2), t2
// Pairs: t1 and t3 see t0, t1 in cluster 0; in cluster 1 t1's pairs with t0
// and t1 were counted in cluster 0 already, and t2 sees t0, t1, t2.
TEST(RoutedUnionPack, HandPacked) {
  Rng rng(44);
  const Case c = random_case(4, 2, rng);
  const ops::Clusters cl{groups_route(4, {{1, 3}, {1, 2}}), groups_route(4, {{0, 1}, {0, 1, 2}})};
  const HostUnionPack p(c, cl);
  EXPECT_EQ(p.seg, (std::vector<int32_t>{0, 4, 9}));
  EXPECT_EQ(p.key_len, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(p.row_token, (std::vector<int32_t>{0, 1, 1, 3, 0, 1, 2, 1, 2}));
  EXPECT_EQ(p.is_key, (std::vector<int32_t>{1, 1, 0, 0, 2, 2, 1, 0, 0}));
  EXPECT_EQ(p.is_query, (std::vector<int32_t>{0, 0, 1, 1, 0, 0, 0, 2, 1}));
  const HostCounts n(p.hh.h, cl.queries.rows());
  EXPECT_EQ(n.cnt, (std::vector<int32_t>{2, 2, 0, 3}));  // query rows t1 t3 | t1 t2
  EXPECT_EQ(n.n, (std::vector<int32_t>{-1, 2, 3, 2}));
  const ops::KeySets pairs = p.varlen_pairs();
  EXPECT_EQ(pairs.off.to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 0, 2, 4, 4, 4, 4, 4, 7}));
  EXPECT_EQ(pairs.idx.to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 0, 1, 4, 5, 6}));
  expect_matches_reference(c, cl);
}


// ---- stacked heads ----------------------------------------------------------

// Rows [s T, (s+1) T) of x.
Tensor head_rows(const Tensor& x, int64_t s, int64_t T) { return x.rows(s * T, (s + 1) * T).clone(); }
Case head_case(const Case& c, int64_t s, int64_t T) {
  return {head_rows(c.q, s, T), head_rows(c.k, s, T), head_rows(c.v, s, T), head_rows(c.dout, s, T),
          {head_rows(c.start.dq, s, T), head_rows(c.start.dk, s, T), head_rows(c.start.dv, s, T)}};
}

// Four heads of T tokens stacked, two centroid sets (heads 0-1 and 2-3, as
// the layer stacks a routing head's sequences): one assignment and one
// attention over the stack are each head's own, bit for bit on the CPU, and
// the host replay of the CUDA packing matches the CPU on the stack (causal:
// no bitmaps; balanced: each token's own head's bits). The per-set ops
// (stats, commitment) over a head range equal the per-head calls in order.
TEST(RoutedUnionPack, StackedHeadsAreEachHeadAlone) {
  Ctx& ctx = host_ctx();
  Rng rng(45);
  const int64_t S = 4, T = 37, D = 8, K = 5;
  const Case all = random_case(S * T, D, rng);
  Tensor qn = testing::zeros({S * T, D}), kn = testing::zeros({S * T, D}), m = testing::zeros({S * T}),
         r = testing::zeros({S * T});
  ops::layernorm_forward(ctx, {qn, m, r, all.q, Tensor(), Tensor()});
  ops::layernorm_forward(ctx, {kn, m, r, all.k, Tensor(), Tensor()});
  std::vector<ops::Centroids> sets;
  for (int64_t i = 0; i < 2; ++i) {
    sets.emplace_back(K, D, ctx);
    ops::kmeans_init(ctx, sets.back(), qn.rows(i * 2 * T, (i + 1) * 2 * T), 2, rng);
  }
  for (const ops::ClusterParams& p : {ops::ClusterParams{}, balanced()}) {
    SCOPED_TRACE(p.mode == ops::ClusterMode::causal ? "causal" : "balanced");
    ops::Clusters cl;
    ops::assign_clusters(ctx, cl, qn, kn, {&sets[0], &sets[1]}, S, p);
    ASSERT_EQ(cl.heads, S);
    ASSERT_EQ(cl.num(), S * K);
    const testing::Reference whole = testing::reference(all, cl);
    ops::ClusterStats stats(K, D, ctx), want_stats(K, D, ctx);
    ops::accumulate_cluster_stats(ctx, stats, qn, kn, cl, {2, 2});
    Tensor dqn = testing::zeros({S * T, D}), want_dqn = testing::zeros({S * T, D});
    ops::commitment_backward(ctx, dqn, qn, cl, sets[1], 0.3f, {2, 2});
    const ops::CommitmentSums cs = ops::commitment_sums(ctx, qn, cl, sets[1], nullptr, {2, 2});
    double want_sq = 0;
    int64_t want_count = 0;
    for (int64_t s = 0; s < S; ++s) {
      SCOPED_TRACE(::testing::Message() << "head " << s);
      const Case c = head_case(all, s, T);
      const Tensor qh = head_rows(qn, s, T), kh = head_rows(kn, s, T);
      ops::Clusters own;
      ops::assign_clusters(ctx, own, qh, kh, sets[s / 2], p);
      const testing::Reference alone = testing::reference(c, own);
      EXPECT_EQ(head_rows(whole.o, s, T).to_vector<float>(), alone.o.to_vector<float>());
      EXPECT_EQ(whole.lse.rows(s * T, (s + 1) * T).clone().to_vector<float>(), alone.lse.to_vector<float>());
      EXPECT_EQ(head_rows(whole.grads.dq, s, T).to_vector<float>(), alone.grads.dq.to_vector<float>());
      EXPECT_EQ(head_rows(whole.grads.dk, s, T).to_vector<float>(), alone.grads.dk.to_vector<float>());
      EXPECT_EQ(head_rows(whole.grads.dv, s, T).to_vector<float>(), alone.grads.dv.to_vector<float>());
      if (s >= 2) {
        ops::accumulate_cluster_stats(ctx, want_stats, qh, kh, own);
        Tensor d = want_dqn.rows(s * T, (s + 1) * T);
        ops::commitment_backward(ctx, d, qh, own, sets[1], 0.3f);
        const ops::CommitmentSums one = ops::commitment_sums(ctx, qh, own, sets[1]);
        want_sq += one.sq, want_count += one.count;
      }
    }
    EXPECT_EQ(stats.sum.to_vector<float>(), want_stats.sum.to_vector<float>());
    EXPECT_EQ(stats.count.to_vector<float>(), want_stats.count.to_vector<float>());
    EXPECT_EQ(dqn.to_vector<float>(), want_dqn.to_vector<float>());
    EXPECT_EQ(cs.count, want_count);
    EXPECT_NEAR(cs.sq, want_sq, 1e-9 * std::abs(want_sq));
    expect_matches_reference(all, cl);  // the CUDA steps on the host, over the stack
  }
}

}  // namespace
}  // namespace sy
