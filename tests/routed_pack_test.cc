// The packed CUDA path of routed attention (one cluster per token on each
// side, ops/cuda/routed_pack.h) without a GPU: the pack, gather and scatter
// steps run here on the host, the radix sort as a stable sort of the same
// keys, and the varlen flash kernels as the CPU's sparse attention over the
// pairs their flags allow (row j <= row i of one segment, i a query row, j a
// key row: attention_varlen.h's definition, which backend_ops_test checks
// the kernels against on a GPU). Compared with the CPU reference: o, lse and
// dq, dk, dv within 1e-5 relative L2 (class F), the union key sets exactly,
// and every segment within the bound the launcher sizes the varlen grid by.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "attention_rows.h"
#include "ops/cuda/routed_pack.h"
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
using testing::HostRun;
using testing::one_cluster;
using testing::poisoned;
using testing::random_case;
using testing::rel_l2;

// The launcher's pack() on the host, with poisoned buffers.
struct HostPack {
  int64_t T, K, R;
  std::vector<int32_t> kitem, krow_group, entry, sorted_entry, qrow, krow, row_token, is_query, is_key, seg, n;
  std::vector<uint64_t> key, sorted_key;
  routed::CausalRoutes r{};

  HostPack(const ops::Clusters& cl, int64_t tokens)
      : T(tokens), K(cl.num()), R(cl.queries.rows() + cl.keys.rows()), kitem(cl.keys.rows(), -7),
        krow_group(cl.keys.rows(), -7), entry(2 * T, -7), sorted_entry(2 * T, -7), qrow(T, -7), krow(T, -7),
        row_token(R, -7), is_query(R, -7), is_key(R, -7), seg(K + 1, -7), n(T, -7), key(2 * T, 77),
        sorted_key(2 * T, 77) {
    const ops::Route &qr = cl.queries, &kr = cl.keys;
    HostRun run;
    run(T, routed::MemberRows{kr.group.data<int32_t>(), kr.slot.data<int32_t>(), kr.offset.data<int32_t>(), 1,
                              kitem.data(), krow_group.data()});
    r = {qr.group.data<int32_t>(), qr.slot.data<int32_t>(), kr.group.data<int32_t>(), kr.slot.data<int32_t>(),
         kr.offset.data<int32_t>(), kitem.data(),          T,                        K};
    const int pos_bits = routed::position_bits(T);
    const routed::PackBuffers b{key.data(),    entry.data(), sorted_key.data(), sorted_entry.data(),
                                qrow.data(),   krow.data(),  row_token.data(),  is_query.data(),
                                is_key.data(), R,            pos_bits};
    run(T, routed::PackEntries{r, b});
    std::vector<int64_t> order(2 * T);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return key[a] < key[c]; });
    for (int64_t i = 0; i < 2 * T; ++i) sorted_key[i] = key[order[i]], sorted_entry[i] = entry[order[i]];
    for (int64_t s = 0; s <= K; ++s)  // segment_starts: the first row whose cluster is >= s
      seg[s] = static_cast<int32_t>(std::find_if(sorted_key.begin(), sorted_key.end(),
                                                 [&](uint64_t x) { return int64_t(x >> pos_bits) >= s; }) -
                                    sorted_key.begin());
    run(R, routed::PackRows{r, b});
    run(T, routed::KeyCounts{r, n.data()});
  }

  // The pairs the varlen mask allows, as key sets over the packed rows.
  ops::KeySets varlen_pairs() const {
    ops::KeySetsBuilder kb;
    std::vector<int32_t> keys;
    for (int64_t i = 0; i < R; ++i) {
      keys.clear();
      const int64_t s = std::upper_bound(seg.begin(), seg.end(), i) - seg.begin() - 1;  // i's segment
      if (s < K && is_query[i])
        for (int64_t j = seg[s]; j <= i; ++j)
          if (is_key[j]) keys.push_back(static_cast<int32_t>(j));
      kb.add_query(keys);
    }
    return kb.build(host_ctx());
  }
};

void expect_matches_reference(const Case& c, const ops::Clusters& cl) {
  Ctx& ctx = host_ctx();
  const int64_t T = c.q.dim(0), D = c.q.dim(1);
  ASSERT_EQ(cl.queries.k, 1);
  ASSERT_EQ(cl.keys.k, 1);
  // CPU reference
  Tensor o = testing::zeros({T, D}), lse = testing::zeros({T});
  ops::KeySets ks;
  ops::routed_attention_forward(ctx, {o, lse, ks, c.q, c.k, c.v, cl});
  Grads want{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
  ops::routed_attention_backward(ctx, {want.dq, want.dk, want.dv, c.dout, o, lse, c.q, c.k, c.v, ks, cl});

  const HostPack p(cl, T);
  // The varlen grid's bound: no segment longer than its cluster's queries
  // plus keys, and every real row below R.
  const std::vector<int32_t> qn = cl.queries.host_count(), kn = cl.keys.host_count();
  for (int64_t s = 0; s < p.K; ++s) EXPECT_LE(p.seg[s + 1] - p.seg[s], qn[s] + kn[s]) << "segment " << s;
  EXPECT_LE(p.seg[p.K], p.R);
  HostRun run;
  Tensor qkv = poisoned({p.R, 3 * D});
  run(p.R * 3 * D, routed::GatherQKV<routed::F32>{c.q.f32(), c.k.f32(), c.v.f32(), p.row_token.data(), D, qkv.f32()});
  const Tensor qp = columns(qkv, 0, D), kp = columns(qkv, D, D), vp = columns(qkv, 2 * D, D);
  const ops::KeySets pairs = p.varlen_pairs();
  Tensor out = testing::zeros({p.R, D}), lse_p = testing::zeros({p.R});
  ops::sparse_attention_forward(ctx, {out, lse_p, qp, kp, vp, pairs});

  // the forward's scatter, and the key sets
  Tensor got_o = poisoned({T, D}), got_lse = poisoned({T});
  run(T * D, routed::ScatterForward<routed::F32>{c.q.f32(), c.k.f32(), c.v.f32(), p.qrow.data(), p.n.data(), out.f32(),
                                    lse_p.f32(), D, 1.f / std::sqrt(static_cast<float>(D)), got_o.f32(),
                                    got_lse.f32()});
  EXPECT_LE(rel_l2(got_o, o), 1e-5) << "o";
  testing::expect_lse(got_lse, lse);
  std::vector<int64_t> sizes(T, -7);
  std::vector<double> sizes_f64(T, -7);
  run(T, routed::KeySetSizes{p.n.data(), sizes.data(), sizes_f64.data()});
  const std::vector<int64_t> off = routed::key_offsets(sizes);
  std::vector<int32_t> idx(off.back(), -7);
  run(T, routed::FillCausalKeys{p.r, p.n.data(), off.data(), idx.data()});
  for (int64_t t = 0; t < T; ++t) EXPECT_EQ(sizes_f64[t], static_cast<double>(sizes[t]));
  EXPECT_EQ(off, ks.off.to_vector<int64_t>()) << "key set offsets";
  EXPECT_EQ(idx, ks.idx.to_vector<int32_t>()) << "key set indices";

  // the backward, from the reference's o and lse
  Tensor dout_p = poisoned({p.R, D}), o_p = poisoned({p.R, D}), lse_g = poisoned({p.R});
  run(p.R * D, routed::GatherGrad<routed::F32>{c.dout.f32(), o.f32(), lse.f32(), p.row_token.data(), p.is_query.data(), D,
                                  dout_p.f32(), o_p.f32(), lse_g.f32()});
  Tensor dq = testing::zeros({p.R, D}), dk = testing::zeros({p.R, D}), dv = testing::zeros({p.R, D});
  ops::sparse_attention_backward(ctx, {dq, dk, dv, dout_p, o_p, lse_g, qp, kp, vp, pairs});
  Tensor dqkv = poisoned({p.R, 3 * D});
  for (int64_t i = 0; i < p.R; ++i) {
    std::copy_n(dq.f32() + i * D, D, dqkv.f32() + i * 3 * D);
    std::copy_n(dk.f32() + i * D, D, dqkv.f32() + i * 3 * D + D);
    std::copy_n(dv.f32() + i * D, D, dqkv.f32() + i * 3 * D + 2 * D);
  }
  Grads got{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
  run(T * D, routed::ScatterBackward<routed::F32>{p.qrow.data(), p.krow.data(), p.n.data(), dqkv.f32(), c.dout.f32(), D,
                                     got.dq.f32(), got.dk.f32(), got.dv.f32()});
  testing::expect_grads(got, want);
}

TEST(RoutedPack, CausalClusters) {
  Rng rng(31);
  for (int trial = 0; trial < 3; ++trial) {
    Case c = random_case(61, 8, rng);
    expect_matches_reference(c, clusters_of(c, 5, ops::ClusterParams{}, rng));
  }
}

TEST(RoutedPack, CausalClustersWithDrops) {
  Rng rng(32);
  ops::ClusterParams p;
  p.dropless = false;
  p.capacity_factor = 0.7f;  // some tokens in no cluster: o = 0, lse = -inf
  Case c = random_case(53, 6, rng);
  const ops::Clusters cl = clusters_of(c, 4, p, rng);
  ASSERT_GT(cl.queries.dropped, 0);
  ASSERT_GT(cl.keys.dropped, 0);
  expect_matches_reference(c, cl);
}

TEST(RoutedPack, SharedKeyListsOneClusterAndMoreThan64) {
  Rng rng(33);
  Case c = random_case(29, 5, rng);
  expect_matches_reference(c, clusters_of(c, 3, ops::ClusterParams{}, rng, true));  // every row a query and a key
  expect_matches_reference(c, clusters_of(c, 1, ops::ClusterParams{}, rng));        // dense causal
  Case wide = random_case(160, 4, rng);
  expect_matches_reference(wide, clusters_of(wide, 70, ops::ClusterParams{}, rng));
}

TEST(RoutedPack, LoneQueryAttendsToItselfAndNonMemberGetsZero) {
  Rng rng(34);
  Case c = random_case(6, 3, rng);
  ops::Clusters cl;
  cl.queries = one_cluster(6, {1, 3, 4});
  cl.keys = one_cluster(6, {2, 3});  // query 1: no key <= 1, itself; 0, 2, 5: in no cluster
  expect_matches_reference(c, cl);
}

// A packing worked by hand: query clusters (0, 1, 0, none), key clusters
// (1, 1, 0, 0). Token 0 is a query row of segment 0 and a key row of
// segment 1; tokens 1 and 2 are one row each (both sides agree); token 3 is a
// key row only.
TEST(RoutedPack, HandPackedSegments) {
  const int64_t T = 4;
  auto route = [&](std::vector<int32_t> group) {
    ops::Route r;
    r.num_items = T, r.k = 1, r.num_groups = 2;
    std::vector<int32_t> slot(T, -1), count(2, 0);
    for (int64_t t = 0; t < T; ++t) {
      if (group[t] >= 0)
        slot[t] = count[group[t]]++;
      else
        group[t] = 0;
    }
    r.group = Tensor::from_host(group), r.slot = Tensor::from_host(slot);
    r.host_offset = {0, count[0], count[0] + count[1]};
    r.offset = Tensor::from_host(r.host_offset);
    return r;
  };
  const ops::Clusters cl{route({0, 1, 0, -1}), route({1, 1, 0, 0})};
  const HostPack p(cl, T);
  const auto first5 = [](const std::vector<int32_t>& v) { return std::vector<int32_t>(v.begin(), v.begin() + 5); };
  // segment 0: t0 (query), t2 (query and key), t3 (key); segment 1: t0 (key), t1 (query and key)
  EXPECT_EQ(p.R, 7);
  EXPECT_EQ(p.seg, (std::vector<int32_t>{0, 3, 5}));
  EXPECT_EQ(first5(p.row_token), (std::vector<int32_t>{0, 2, 3, 0, 1}));
  EXPECT_EQ(first5(p.is_query), (std::vector<int32_t>{1, 1, 0, 0, 1}));
  EXPECT_EQ(first5(p.is_key), (std::vector<int32_t>{0, 1, 1, 1, 1}));
  EXPECT_EQ(p.qrow, (std::vector<int32_t>{0, 4, 1, -1}));
  EXPECT_EQ(p.krow, (std::vector<int32_t>{3, 4, 1, 2}));
  // t0: no key <= 0 in cluster 0 (alone: itself); t1: keys 0, 1; t2: key 2; t3: no query
  EXPECT_EQ(p.n, (std::vector<int32_t>{0, 2, 1, -1}));
  EXPECT_EQ(std::vector<int32_t>(p.is_query.begin() + 5, p.is_query.end()), (std::vector<int32_t>{0, 0}));
}

}  // namespace
}  // namespace sy
