// The CUDA path of attention over key sets without a GPU: the row and warp
// functions and step sequences of ops/cuda/sparse_attention_rows.h (what each
// CUDA thread or warp runs, in the CUDA launcher's order) run here on the
// host and are compared with the CPU reference (ops/cpu/sparse_attention.cc):
// o, lse and dq, dk, dv within 1e-5 relative L2 (class F), the local key sets
// and the transposed key sets exactly. A warp is 32 host threads whose sums
// meet at a barrier (HostWarps), each lane with its own share of a row; the
// radix sort is emulated by a stable sort on the same keys and
// segment_starts by lower bounds; the launch mechanics and the device's
// float rounding are left to the GPU tests (backend_ops_test).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "attention_rows.h"
#include "ops/cuda/sparse_attention_rows.h"
#include "ops/sparse_attention.h"

namespace sy {
namespace {

namespace sparse = ops::sparse;
using testing::Case;
using testing::expect_grads;
using testing::expect_lse;
using testing::Grads;
using testing::HostRun;
using testing::HostWarps;
using testing::random_case;
using testing::rel_l2;

sparse::Head head_of(const Case& c, const ops::KeySets& ks) {
  const int64_t T = c.q.dim(0), D = c.q.dim(1);
  return {c.q.f32(), c.k.f32(), c.v.f32(), T, D, 1.f / std::sqrt(static_cast<float>(D)),
          ks.off.data<int64_t>(), ks.idx.data<int32_t>()};
}

// The transposed key sets as the CUDA backward builds them (poisoned buffers).
struct Transposed {
  std::vector<uint64_t> pair_key, sorted_key;
  std::vector<int32_t> pair_query, key_query, koff;
};

// The CUDA backward's steps on the host, from the given o and lse.
Grads emulate_backward(const sparse::Head& h, int64_t P, const Case& c, const Tensor& o, const Tensor& lse,
                       Transposed& tr) {
  Grads g{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
  std::vector<float> delta(h.T, NAN);
  tr = {std::vector<uint64_t>(P, 77), std::vector<uint64_t>(P, 77), std::vector<int32_t>(P, -7),
        std::vector<int32_t>(P, -7), std::vector<int32_t>(h.T + 1, -7)};
  const sparse::BackwardBuffers b{c.dout.f32(),         o.f32(),          lse.f32(),         delta.data(),
                                  tr.pair_key.data(),   tr.pair_query.data(), tr.sorted_key.data(),
                                  tr.key_query.data(),  tr.koff.data(),   g.dq.f32(),        g.dk.f32(),
                                  g.dv.f32()};
  auto sort_and_starts = [&] {  // radix sort (stable) and segment_starts
    std::vector<int64_t> order(P);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t x) { return tr.pair_key[a] < tr.pair_key[x]; });
    for (int64_t p = 0; p < P; ++p) {
      tr.sorted_key[p] = tr.pair_key[order[p]];
      tr.key_query[p] = tr.pair_query[order[p]];
    }
    for (int64_t u = 0; u <= h.T; ++u)
      tr.koff[u] = static_cast<int32_t>(
          std::lower_bound(tr.sorted_key.begin(), tr.sorted_key.end(), static_cast<uint64_t>(u)) -
          tr.sorted_key.begin());
  };
  sparse::with_lane_values(h.D, [&](auto v) {
    sparse::backward_steps<decltype(v)::value>(HostWarps{}, sort_and_starts, h, b);
  });
  return g;
}

// The whole comparison for one head and its key sets.
void expect_matches_reference(const Case& c, const ops::KeySets& ks) {
  Ctx& ctx = host_ctx();
  const int64_t T = c.q.dim(0), D = c.q.dim(1), P = ks.pairs();
  Tensor o = testing::zeros({T, D}), lse = testing::zeros({T});
  ops::sparse_attention_forward(ctx, {o, lse, c.q, c.k, c.v, ks});
  Grads want{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
  ops::sparse_attention_backward(ctx, {want.dq, want.dk, want.dv, c.dout, o, lse, c.q, c.k, c.v, ks});

  const sparse::Head h = head_of(c, ks);
  Tensor got_o = testing::zeros({T, D}), got_lse = testing::zeros({T});
  got_o.fill(NAN);
  got_lse.fill(NAN);
  sparse::with_lane_values(h.D, [&](auto v) {
    sparse::forward_steps<decltype(v)::value>(HostWarps{}, h, got_o.f32(), got_lse.f32());
  });
  EXPECT_LE(rel_l2(got_o, o), 1e-5) << "o";
  expect_lse(got_lse, lse);

  // The backward from the reference's o and lse, so it is checked on its own.
  Transposed tr;
  const Grads got = emulate_backward(h, P, c, o, lse, tr);
  expect_grads(got, want);

  // The transposed key sets: key u's queries, ascending, each once per pair.
  const std::vector<int64_t> off = ks.off.to_vector<int64_t>();
  const std::vector<int32_t> idx = ks.idx.to_vector<int32_t>();
  std::vector<std::vector<int32_t>> by_key(T);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = off[t]; j < off[t + 1]; ++j) by_key[idx[j]].push_back(static_cast<int32_t>(t));
  for (int64_t u = 0; u < T; ++u) {
    const std::vector<int32_t> listed(tr.key_query.begin() + tr.koff[u], tr.key_query.begin() + tr.koff[u + 1]);
    ASSERT_EQ(listed, by_key[u]) << "queries of key " << u;
  }
  EXPECT_EQ(tr.koff[T], P);
}

// Any key sets: random subsets in random order, some empty, some with a key twice.
ops::KeySets random_keysets(int64_t T, Rng& rng) {
  ops::KeySetsBuilder b;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> keys;
    const int64_t n = rng.below(4) == 0 ? 0 : static_cast<int64_t>(rng.below(T + 1));
    for (int64_t i = 0; i < n; ++i) keys.push_back(static_cast<int32_t>(rng.below(T)));
    b.add_query(keys);
  }
  return b.build(host_ctx());
}

TEST(SparseAttentionRows, LocalWindows) {
  Rng rng(31);
  for (int64_t w : {1, 4, 16, 100}) {
    SCOPED_TRACE("window " + std::to_string(w));
    Case c = random_case(45, 8, rng);
    expect_matches_reference(c, ops::local_keysets(host_ctx(), 45, w));
  }
}

// Head dims past a warp's width: each lane holds 2, 4, 8 or 16 values of a
// row, the last of them partly past D (33: one lane's second value, 130,
// 300), every lane's whole share (64).
TEST(SparseAttentionRows, WideHeadsSplitOverTheLanes) {
  Rng rng(36);
  for (int64_t D : {33, 64, 130, 300}) {
    SCOPED_TRACE("head dim " + std::to_string(D));
    ASSERT_GT(sparse::lane_values(D), 0);
    EXPECT_LE(D, 32 * sparse::lane_values(D));
    Case c = random_case(20, D, rng);
    expect_matches_reference(c, ops::local_keysets(host_ctx(), 20, 6));
  }
  Case c = random_case(12, 40, rng);
  expect_matches_reference(c, random_keysets(12, rng));
  EXPECT_EQ(sparse::lane_values(512), 16);
  EXPECT_EQ(sparse::lane_values(513), 0);  // (CUDA refuses such heads)
}

TEST(SparseAttentionRows, BlockTopk) {
  Rng rng(32);
  for (auto [block, topk] : {std::pair<int64_t, int64_t>{4, 2}, {8, 1}, {5, 0}, {3, 20}}) {
    SCOPED_TRACE("block " + std::to_string(block) + " topk " + std::to_string(topk));
    Case c = random_case(50, 6, rng);
    expect_matches_reference(c, ops::block_topk_keysets(host_ctx(), c.q, c.k, block, topk));
  }
}

TEST(SparseAttentionRows, AnyKeySetsWithEmptyOnesAndRepeatedKeys) {
  Rng rng(33);
  for (int trial = 0; trial < 4; ++trial) {
    Case c = random_case(30, 5, rng);
    expect_matches_reference(c, random_keysets(30, rng));
  }
  Case one = random_case(1, 3, rng);  // T = 1: every key is 0
  expect_matches_reference(one, ops::local_keysets(host_ctx(), 1, 3));
}

// The device's local key sets (closed-form offsets) are the CPU's, exactly.
TEST(SparseAttentionRows, LocalKeySetsMatchTheCpu) {
  for (int64_t T : {0, 1, 2, 7, 64, 65})
    for (int64_t w : {1, 2, 3, 64, 65, 1000}) {
      const ops::KeySets want = ops::local_keysets(host_ctx(), T, w);
      std::vector<int64_t> off(T + 1, -7);
      std::vector<int32_t> idx(sparse::local_offset(T, w), -7);
      ASSERT_EQ(static_cast<int64_t>(idx.size()), want.pairs()) << "T " << T << " w " << w;
      HostRun{}(T + 1, sparse::LocalKeys{T, w, off.data(), idx.data()});
      EXPECT_EQ(off, want.off.to_vector<int64_t>()) << "T " << T << " w " << w;
      EXPECT_EQ(idx, want.idx.to_vector<int32_t>()) << "T " << T << " w " << w;
    }
}

// The device's block top-k key sets (block means, per-query selection,
// closed-form offsets) are the CPU's, exactly.
// With scored = true the scores come from BlockScores' buffer (CUDA's
// route), else each query computes them.
ops::KeySets device_block_topk(const Tensor& q, const Tensor& k, int64_t block, int64_t topk, std::vector<int64_t>& off,
                               std::vector<int32_t>& idx, bool scored = false) {
  const int64_t T = q.dim(0), D = q.dim(1), nb = (T + block - 1) / block;
  std::vector<float> kmean(nb * D, NAN), scores(nb * T, NAN);
  HostRun{}(nb * D, sparse::BlockMean{k.f32(), T, D, block, kmean.data()});
  if (scored) HostRun{}(nb * T, sparse::BlockScores{q.f32(), kmean.data(), T, D, scores.data()});
  off.assign(T + 1, -7);
  idx.assign(sparse::block_topk_offset(T, block, topk), -7);
  HostRun{}(T + 1, sparse::BlockTopkKeys{q.f32(), kmean.data(), T, D, block, topk, off.data(), idx.data(),
                                         scored ? scores.data() : nullptr});
  return ops::KeySets{Tensor::from_host(off), Tensor::from_host(idx)};
}

void expect_block_topk_matches_cpu(const Tensor& q, const Tensor& k, int64_t block, int64_t topk) {
  SCOPED_TRACE("T " + std::to_string(q.dim(0)) + " block " + std::to_string(block) + " topk " + std::to_string(topk));
  const ops::KeySets want = ops::block_topk_keysets(host_ctx(), q, k, block, topk);
  for (const bool scored : {false, true}) {
    SCOPED_TRACE(scored ? "scores from the buffer" : "scores per query");
    std::vector<int64_t> off;
    std::vector<int32_t> idx;
    device_block_topk(q, k, block, topk, off, idx, scored);
    ASSERT_EQ(static_cast<int64_t>(idx.size()), want.pairs());
    EXPECT_EQ(off, want.off.to_vector<int64_t>());
    EXPECT_EQ(idx, want.idx.to_vector<int32_t>());
  }
}

TEST(SparseAttentionRows, BlockTopkKeySetsMatchTheCpu) {
  Rng rng(34);
  for (int64_t T : {1, 2, 9, 50, 64, 67})
    for (auto [block, topk] : {std::pair<int64_t, int64_t>{1, 3}, {4, 0}, {4, 2}, {8, 1}, {5, 100}, {64, 1},
                               {1, 8}, {1, 9}, {1, 16}, {2, 17}, {1, 40}})  // the 8- and 16-list, and rounds
      expect_block_topk_matches_cpu(testing::randn({T, 6}, rng), testing::randn({T, 6}, rng), block, topk);
}

// Tied scores: blocks 0, 2 and 5 of k are copies (equal means, equal scores),
// and a zero query ties every block; ties go to the lower block.
TEST(SparseAttentionRows, BlockTopkTiesGoToTheLowerBlock) {
  Rng rng(35);
  const int64_t T = 40, D = 4, block = 4;
  Tensor q = testing::randn({T, D}, rng), k = testing::randn({T, D}, rng);
  for (int64_t b : {2, 5})
    for (int64_t i = 0; i < block * D; ++i) k.f32()[b * block * D + i] = k.f32()[i];
  for (int64_t d = 0; d < D; ++d) q.f32()[33 * D + d] = 0.f;
  for (int64_t topk : {1, 2, 3, 9})  // (9: the 16-list for the last blocks)
    expect_block_topk_matches_cpu(q, k, block, topk);
  // The attention over them too.
  Case c = random_case(T, D, rng);
  c.q = q, c.k = k;
  std::vector<int64_t> off;
  std::vector<int32_t> idx;
  expect_matches_reference(c, device_block_topk(q, k, block, 2, off, idx));
}

// Many exact ties in every path (the 8-list, the 16-list, the rounds): head
// dim 1, keys constant over each block from {-1, 0, 1} (exact means), queries
// from {-1, 0, 1, 2} with a zero and a NaN query late and one NaN block
// mean, so the 8th and 16th places tie (the list's fast path), -inf scores
// tie with each other and rank before the list's sentinels, and own up to 19
// blocks lets top 1..17 choose among them.
TEST(SparseAttentionRows, BlockTopkTiesInEveryList) {
  const int64_t T = 80, block = 4;
  Tensor q = testing::zeros({T, 1}), k = testing::zeros({T, 1});
  const float qv[] = {-1.f, 0.f, 1.f, 2.f, 1.f, -1.f, 2.f};
  for (int64_t t = 0; t < T; ++t) {
    q.f32()[t] = qv[t % 7];
    k.f32()[t] = static_cast<float>((t / block * 5) % 3) - 1.f;  // block b's keys: one of -1, 0, 1
  }
  q.f32()[74] = 0.f;   // a zero query: every score 0
  q.f32()[77] = NAN;   // a NaN query: every score NaN (-inf)
  k.f32()[6 * block] = NAN;  // block 6's mean: NaN for every query
  for (int64_t topk : {1, 3, 8, 9, 16, 17}) expect_block_topk_matches_cpu(q, k, block, topk);
}

// NaN scores rank last, as -inf: a NaN query still gets exactly keep blocks
// (the lowest), every slot of its key set written and in range, the CPU's
// choice; one NaN block mean ranks below every number. Before the rule the
// rows left slots unwritten (the -7s the helper fills in) that the unpacked
// kernels would have indexed with.
TEST(SparseAttentionRows, BlockTopkNanScoresRankLast) {
  Rng rng(36);
  const int64_t T = 40, D = 4, block = 4;
  Tensor q = testing::randn({T, D}, rng), k = testing::randn({T, D}, rng);
  q.f32()[30 * D + 1] = NAN;  // every score of query 30
  k.f32()[2 * block * D] = NAN;  // block 2's mean: NaN for every query
  for (int64_t topk : {1, 2, 3, 9}) {
    expect_block_topk_matches_cpu(q, k, block, topk);
    std::vector<int64_t> off;
    std::vector<int32_t> idx;
    device_block_topk(q, k, block, topk, off, idx);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t p = off[t]; p < off[t + 1]; ++p) ASSERT_TRUE(idx[p] >= 0 && idx[p] <= t) << "query " << t;
  }
}

}  // namespace
}  // namespace sy
