// The CUDA path of routed attention's attention without a GPU: the row and
// warp functions and step sequences of ops/cuda/routed_attention_rows.h (what
// each CUDA thread or warp runs, in the CUDA launcher's order; a warp is 32
// host threads, HostWarps) run here on the host and
// are compared with the CPU reference (ops/cpu/routed_attention.cc and the
// sparse backward over its key sets): o, lse and dq, dk, dv within 1e-5
// relative L2 (class F), the union key sets exactly. Only the launch
// mechanics, the radix sort (emulated by a stable sort on the same keys) and
// the device's float rounding are left to the GPU tests
// (backend_ops_test, routed_attention_test's Cuda cases).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "attention_rows.h"
#include "ops/cuda/routed_attention_rows.h"
#include "ops/routed_attention.h"
#include "routed_clusters.h"

namespace sy {
namespace {

namespace routed = ops::routed;
using testing::Case;
using testing::clusters_of;
using testing::expect_grads;
using testing::expect_lse;
using testing::Grads;
using testing::HostHead;
using testing::HostRun;
using testing::HostWarps;
using testing::one_cluster;
using testing::random_case;
using testing::rel_l2;

struct Result {
  Tensor o, lse;
  std::vector<int64_t> off;
  std::vector<int32_t> idx;
};

// The CUDA forward's steps on the host (poisoned outputs, as the GPU tests do).
Result emulate_forward(const routed::Head& h, int64_t rows) {
  std::vector<float> o_part(rows * h.D, NAN), lse_part(rows, NAN);
  std::vector<int32_t> cnt_part(rows, -7);
  std::vector<int64_t> pairs(h.T, -7);
  Result r{testing::zeros({h.T, h.D}), testing::zeros({h.T}), {}, {}};
  r.o.fill(NAN);
  r.lse.fill(NAN);
  routed::with_lane_values(h.D, [&](auto v) {
    routed::forward_steps<decltype(v)::value>(
        HostRun{}, HostWarps{}, h, rows,
        {o_part.data(), lse_part.data(), cnt_part.data(), r.o.f32(), r.lse.f32(), pairs.data()});
  });
  r.off = routed::key_offsets(pairs);
  const int64_t P = r.off.back();
  r.idx.assign(P, -7);
  routed::FillKeys fill{h, cnt_part.data(), r.off.data(), r.idx.data(), nullptr, 0};
  if (h.qs.k == 1) {
    HostRun{}(h.T, fill);
  } else {  // the radix sort on (t << bits) | u, as a stable sort of the same pairs
    std::vector<int32_t> unsorted(P, -7);
    std::vector<uint64_t> key(P, 0);
    fill.idx = unsorted.data();
    fill.sort_key = key.data();
    fill.sort_bits = routed::position_bits(h.T);
    HostRun{}(h.T, fill);
    std::vector<int64_t> order(P);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] < key[b]; });
    for (int64_t p = 0; p < P; ++p) r.idx[p] = unsorted[order[p]];
  }
  return r;
}

Grads emulate_backward(const routed::Head& h, int64_t qrows, int64_t krows, const Tensor& dout, const Tensor& o,
                       const Tensor& lse, const Grads& start) {
  Grads g{start.dq.clone(), start.dk.clone(), start.dv.clone()};
  std::vector<float> delta(h.T, NAN), dq_part(qrows * h.D, NAN), dk_part(krows * h.D, NAN), dv_part(krows * h.D, NAN);
  std::vector<float> self_a(h.T, NAN), self_ds(h.T, NAN);
  std::vector<int32_t> cnt_part(qrows, -7), self(h.T, -7);
  routed::with_lane_values(h.D, [&](auto v) {
    routed::backward_steps<decltype(v)::value>(
        HostRun{}, HostWarps{}, h, qrows, krows,
        {dout.f32(), o.f32(), lse.f32(), delta.data(), dq_part.data(), cnt_part.data(), dk_part.data(),
         dv_part.data(), self.data(), self_a.data(), self_ds.data(), g.dq.f32(), g.dk.f32(), g.dv.f32()});
  });
  return g;
}

// The whole comparison for one head and its clusters.
void expect_matches_reference(const Case& c, const ops::Clusters& cl) {
  Ctx& ctx = host_ctx();
  const int64_t T = c.q.dim(0), D = c.q.dim(1);
  const testing::Reference ref = testing::reference(c, cl);  // the CPU's
  const Tensor &o = ref.o, &lse = ref.lse;
  const ops::KeySets& ks = ref.ks;
  const Grads& want = ref.grads;
  // the CUDA path's steps
  HostHead hh(c.q, c.k, c.v, cl);
  const Result r = emulate_forward(hh.h, cl.queries.rows());
  EXPECT_EQ(r.off, ks.off.to_vector<int64_t>()) << "key set offsets";
  EXPECT_EQ(r.idx, ks.idx.to_vector<int32_t>()) << "key set indices";
  EXPECT_LE(rel_l2(r.o, o), 1e-5) << "o";
  expect_lse(r.lse, lse);
  // The backward from the reference's o and lse, so it is checked on its own.
  const Grads got = emulate_backward(hh.h, cl.queries.rows(), cl.keys.rows(), c.dout, o, lse, c.start);
  expect_grads(got, want);
}

TEST(RoutedAttentionRows, CausalClusters) {
  Rng rng(21);
  for (int trial = 0; trial < 3; ++trial) {
    Case c = random_case(61, 8, rng);
    expect_matches_reference(c, clusters_of(c, 5, ops::ClusterParams{}, rng));
  }
}

TEST(RoutedAttentionRows, CausalClustersWithDrops) {
  Rng rng(22);
  ops::ClusterParams p;
  p.dropless = false;
  p.capacity_factor = 0.7f;  // some tokens in no cluster: o = 0, lse = -inf
  Case c = random_case(53, 6, rng);
  const ops::Clusters cl = clusters_of(c, 4, p, rng);
  ASSERT_GT(cl.queries.dropped, 0);
  expect_matches_reference(c, cl);
}

TEST(RoutedAttentionRows, BalancedClustersQueriesInSeveralClusters) {
  Rng rng(23);
  ops::ClusterParams p;
  p.mode = ops::ClusterMode::balanced;
  for (int trial = 0; trial < 3; ++trial) {
    Case c = random_case(37, 6, rng);
    expect_matches_reference(c, clusters_of(c, 5, p, rng));
  }
}

TEST(RoutedAttentionRows, SharedKeyListsAndOneCluster) {
  Rng rng(24);
  Case c = random_case(29, 5, rng);
  expect_matches_reference(c, clusters_of(c, 3, ops::ClusterParams{}, rng, true));
  ops::ClusterParams p;
  p.mode = ops::ClusterMode::balanced;
  expect_matches_reference(c, clusters_of(c, 3, p, rng, true));
  expect_matches_reference(c, clusters_of(c, 1, ops::ClusterParams{}, rng));  // dense causal
}

// Head dims past a warp's width: each lane holds 2, 4 or 8 values of a row,
// the last partly past D (40, 130), in both modes.
TEST(RoutedAttentionRows, WideHeadsSplitOverTheLanes) {
  Rng rng(28);
  for (int64_t D : {40, 130}) {
    SCOPED_TRACE("head dim " + std::to_string(D));
    Case c = random_case(30, D, rng);
    expect_matches_reference(c, clusters_of(c, 3, ops::ClusterParams{}, rng));
  }
  ops::ClusterParams p;
  p.mode = ops::ClusterMode::balanced;
  Case c = random_case(24, 70, rng);
  expect_matches_reference(c, clusters_of(c, 4, p, rng));
}

// More than 64 clusters: the bitmaps span several words, and the first shared
// cluster can lie in a later word than another shared one.
TEST(RoutedAttentionRows, MoreThan64Clusters) {
  Rng rng(25);
  Case c = random_case(160, 4, rng);
  expect_matches_reference(c, clusters_of(c, 70, ops::ClusterParams{}, rng));
  ops::ClusterParams p;
  p.mode = ops::ClusterMode::balanced;  // S = 3 of 160 per centroid, 70 centroids: tokens in several
  expect_matches_reference(c, clusters_of(c, 70, p, rng));
  expect_matches_reference(c, clusters_of(c, 130, p, rng));
}

TEST(RoutedAttentionRows, LoneQueryAttendsToItselfAndNonMemberGetsZero) {
  Rng rng(26);
  Case c = random_case(6, 3, rng);
  ops::Clusters cl;
  cl.queries = one_cluster(6, {1, 3, 4});
  cl.keys = one_cluster(6, {2, 3});  // query 1: no key <= 1, itself; 0, 2, 5: in no cluster
  expect_matches_reference(c, cl);
}

// The pair rule against its definition, over every (t, u, c) of clusters with
// tokens in several (balanced, more than 64 clusters).
TEST(RoutedAttentionRows, FirstSharedClusterRule) {
  Rng rng(27);
  Case c = random_case(90, 4, rng);
  ops::ClusterParams p;
  p.mode = ops::ClusterMode::balanced;
  const ops::Clusters cl = clusters_of(c, 100, p, rng);
  HostHead hh(c.q, c.k, c.v, cl);
  const int64_t T = 90, K = 100, W = hh.h.W;
  auto member = [&](const routed::Side& s, int64_t t, int64_t cc) {
    for (int64_t j = 0; j < s.k; ++j) {
      const int64_t r = s.row(t, j);
      if (r >= 0 && s.row_group[r] == cc) return true;
    }
    return false;
  };
  int64_t counted = 0, multi = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t u = 0; u < T; ++u) {
      int64_t first = -1, shared = 0;
      for (int64_t cc = 0; cc < K; ++cc)
        if (member(hh.h.qs, t, cc) && member(hh.h.ks, u, cc)) {
          if (first < 0) first = cc;
          ++shared;
        }
      multi += shared > 1;
      for (int64_t cc = 0; cc < K; ++cc) {
        if (!member(hh.h.qs, t, cc) || !member(hh.h.ks, u, cc)) continue;
        const bool want = cc == first;
        ASSERT_EQ(routed::first_shared(hh.h.qs.bits + t * W, hh.h.ks.bits + u * W, cc), want)
            << "t " << t << " u " << u << " cluster " << cc;
        counted += want;
      }
    }
  EXPECT_GT(multi, 0) << "want pairs that share several clusters";
  EXPECT_GT(counted, 0);
}

TEST(RoutedAttentionRows, KeyOffsetsAndPositionBits) {
  EXPECT_EQ(routed::key_offsets({}), (std::vector<int64_t>{0}));
  EXPECT_EQ(routed::key_offsets({2, 0, 3}), (std::vector<int64_t>{0, 2, 2, 5}));
  EXPECT_EQ(routed::position_bits(1), 0);
  EXPECT_EQ(routed::position_bits(2), 1);
  EXPECT_EQ(routed::position_bits(64), 6);
  EXPECT_EQ(routed::position_bits(65), 7);
}

}  // namespace
}  // namespace sy
