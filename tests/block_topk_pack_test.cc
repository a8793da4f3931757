// Block top-k attention packed one segment per key block for the tiled
// varlen kernels (ops/cuda/block_topk_pack.h), without a GPU: the pack,
// gather, merge and scatter steps run here on the host, the radix sort as a
// stable sort of the same keys, and the varlen kernels as the CPU's sparse
// attention over the pairs their flags and key prefixes allow (row j <= row
// i of one segment, i a query row, j a key row among its first key_len rows:
// attention_varlen.h's definition, checked against the kernels on a GPU in
// backend_ops_test). Compared with the CPU reference over the same key sets:
// every packed row written once, the packed pairs exactly the key sets (each
// pair once), o, lse and dq, dk, dv within 1e-5 relative L2 (class F).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>

#include "attention_rows.h"
#include "ops/cuda/block_topk_pack.h"
#include "ops/cuda/packed_rows.h"
#include "ops/sparse_attention.h"

namespace sy {
namespace {

namespace bt = ops::blocktopk;
using testing::columns;
using testing::HostRun;
using testing::poisoned;
using testing::rel_l2;

// pack_blocks (ops/cuda/sparse_attention.cu) on the host, with poisoned buffers.
struct HostBlockPack {
  bt::Shape s;
  int64_t P, nb, R;
  int pos_bits;
  std::vector<uint64_t> key, sorted_key;
  std::vector<int32_t> value, sorted_value, fs, seg, key_len, row_token, is_query, is_key, own_row, pair_row;

  HostBlockPack(const ops::KeySets& ks, int64_t T, int64_t block, int64_t topk)
      : s{T, block, topk}, P(s.pairs()), nb(s.blocks()), R(s.rows()), pos_bits(ops::routed::position_bits(T)),
        key(P, 77), sorted_key(P, 77), value(P, -7), sorted_value(P, -7), fs(nb + 1, -7), seg(nb + 1, -7),
        key_len(nb, -7), row_token(R, -7), is_query(R, -7), is_key(R, -7), own_row(T, -7), pair_row(P, -7) {
    HostRun run;
    run(T, bt::PairKeys{s, ks.off.data<int64_t>(), ks.idx.data<int32_t>(), pos_bits, key.data(), value.data()});
    std::vector<int64_t> order(P);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return key[a] < key[c]; });
    for (int64_t i = 0; i < P; ++i) sorted_key[i] = key[order[i]], sorted_value[i] = value[order[i]];
    for (int64_t b = 0; b <= nb; ++b)  // segment_starts: the first pair whose block is >= b
      fs[b] = static_cast<int32_t>(std::find_if(sorted_key.begin(), sorted_key.end(),
                                                [&](uint64_t x) { return int64_t(x >> pos_bits) >= b; }) -
                                   sorted_key.begin());
    run(nb + 1, bt::Segments{s, fs.data(), seg.data(), key_len.data()});
    const bt::Rows rows{row_token.data(), is_query.data(), is_key.data(), own_row.data(), pair_row.data()};
    run(T, bt::OwnRows{s, fs.data(), rows});
    run(P, bt::PairRows{s, sorted_key.data(), sorted_value.data(), fs.data(), seg.data(), pos_bits, rows});
  }

  // The pairs the varlen mask allows, as key sets over the packed rows.
  ops::KeySets varlen_pairs() const {
    ops::KeySetsBuilder kb;
    std::vector<int32_t> keys;
    for (int64_t i = 0; i < R; ++i) {
      keys.clear();
      const int64_t b = std::upper_bound(seg.begin(), seg.end(), i) - seg.begin() - 1;  // i's segment
      if (b < nb && is_query[i])
        for (int64_t j = seg[b]; j <= i && j < seg[b] + key_len[b]; ++j)
          if (is_key[j]) keys.push_back(static_cast<int32_t>(j));
      kb.add_query(keys);
    }
    return kb.build(host_ctx());
  }

  bt::TokenRows token_rows() const { return {s, own_row.data(), pair_row.data()}; }
};

void expect_matches_reference(int64_t T, int64_t D, int64_t block, int64_t topk, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "T=" << T << " block=" << block << " topk=" << topk);
  Ctx& ctx = host_ctx();
  Rng rng(seed);
  const testing::Case c = testing::random_case(T, D, rng);
  // CPU reference
  const ops::KeySets ks = ops::block_topk_keysets(ctx, c.q, c.k, block, topk);
  Tensor o = testing::zeros({T, D}), lse = testing::zeros({T});
  ops::sparse_attention_forward(ctx, {o, lse, c.q, c.k, c.v, ks});
  testing::Grads want{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
  ops::sparse_attention_backward(ctx, {want.dq, want.dk, want.dv, c.dout, o, lse, c.q, c.k, c.v, ks});

  const HostBlockPack p(ks, T, block, topk);
  // Every row written once, segments tiling [0, R), the key prefixes the blocks.
  for (int64_t r = 0; r < p.R; ++r) ASSERT_GE(p.row_token[r], 0) << "row " << r << " never written";
  EXPECT_EQ(p.seg[0], 0);
  EXPECT_EQ(p.seg[p.nb], p.R);
  int64_t longest = 0;
  for (int64_t b = 0; b < p.nb; ++b) {
    EXPECT_EQ(p.key_len[b], p.s.block_len(b));
    longest = std::max<int64_t>(longest, p.seg[b + 1] - p.seg[b]);
  }
  EXPECT_LE(longest, block + T);  // within what pack_blocks' bound allows
  // The packed pairs, as token pairs, are exactly the key sets.
  const ops::KeySets pairs = p.varlen_pairs();
  std::vector<std::vector<int32_t>> got_keys(T);
  const std::vector<int64_t> poff = pairs.off.to_vector<int64_t>();
  const std::vector<int32_t> pidx = pairs.idx.to_vector<int32_t>();
  for (int64_t i = 0; i < p.R; ++i)
    for (int64_t e = poff[i]; e < poff[i + 1]; ++e) got_keys[p.row_token[i]].push_back(p.row_token[pidx[e]]);
  const std::vector<int64_t> off = ks.off.to_vector<int64_t>();
  const std::vector<int32_t> idx = ks.idx.to_vector<int32_t>();
  for (int64_t t = 0; t < T; ++t) {
    std::sort(got_keys[t].begin(), got_keys[t].end());
    ASSERT_EQ(got_keys[t], std::vector<int32_t>(idx.begin() + off[t], idx.begin() + off[t + 1])) << "query " << t;
  }

  // forward: gather, the varlen kernels' pairs, merge
  HostRun run;
  Tensor qkv = poisoned({p.R, 3 * D});
  run(p.R * 3 * D, ops::routed::GatherQKV<ops::routed::F32>{c.q.f32(), c.k.f32(), c.v.f32(), p.row_token.data(), D,
                                                            qkv.f32()});
  const Tensor qp = columns(qkv, 0, D), kp = columns(qkv, D, D), vp = columns(qkv, 2 * D, D);
  Tensor out = testing::zeros({p.R, D}), lse_p = testing::zeros({p.R});
  ops::sparse_attention_forward(ctx, {out, lse_p, qp, kp, vp, pairs});
  Tensor got_o = poisoned({T, D}), got_lse = poisoned({T});
  run(T * D, bt::MergeForward<ops::routed::F32>{p.token_rows(), out.f32(), lse_p.f32(), D, got_o.f32(), got_lse.f32()});
  EXPECT_LE(rel_l2(got_o, o), 1e-5) << "o";
  testing::expect_lse(got_lse, lse);

  // backward: the token's dout, o, lse on every row; the varlen pairs; scatter
  Tensor dout_p = poisoned({p.R, D}), o_p = poisoned({p.R, D}), l_p = poisoned({p.R});
  run(p.R * D, ops::routed::GatherGrad<ops::routed::F32>{c.dout.f32(), got_o.f32(), got_lse.f32(), p.row_token.data(),
                                                         p.is_query.data(), D, dout_p.f32(), o_p.f32(), l_p.f32()});
  Tensor dq_p = testing::zeros({p.R, D}), dk_p = testing::zeros({p.R, D}), dv_p = testing::zeros({p.R, D});
  ops::sparse_attention_backward(ctx, {dq_p, dk_p, dv_p, dout_p, o_p, l_p, qp, kp, vp, pairs});
  Tensor dqkv = testing::zeros({p.R, 3 * D});
  for (int64_t r = 0; r < p.R; ++r)
    for (int64_t d = 0; d < D; ++d) {
      dqkv.f32()[r * 3 * D + d] = dq_p.f32()[r * D + d];
      dqkv.f32()[r * 3 * D + D + d] = dk_p.f32()[r * D + d];
      dqkv.f32()[r * 3 * D + 2 * D + d] = dv_p.f32()[r * D + d];
    }
  testing::Grads got{c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()};
  run(T * D, bt::ScatterBackward<ops::routed::F32>{p.token_rows(), dqkv.f32(), D, got.dq.f32(), got.dk.f32(), got.dv.f32()});
  testing::expect_grads(got, want);
}

TEST(BlockTopkPack, MatchesTheReferenceOnRandomHeads) {
  uint64_t seed = 1;
  for (const auto& [T, block, topk] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 4, 2}, {5, 4, 1}, {16, 4, 2}, {37, 4, 3}, {64, 8, 8}, {100, 16, 2}, {130, 16, 1}, {300, 32, 3}})
    expect_matches_reference(T, 16, block, topk, seed++);
}

// A packing worked by hand: T = 6, block 2, top-1, D = 2. Block means
// (1, 0) and (0, 1); t2, t3 can only choose block 0; q4 = (0, 1) chooses
// block 1, q5 = (1, 0) block 0. Pairs by (block, t): (0,2) (0,3) (0,5) (1,4).
//   segment 0: rows 0-1 own t0 t1, rows 2-4 queries t2 t3 t5
//   segment 1: rows 5-6 own t2 t3, row 7 query t4
//   segment 2: rows 8-9 own t4 t5
TEST(BlockTopkPack, HandPacked) {
  const Tensor k = Tensor::from_host(std::vector<float>{1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0}, {6, 2});
  const Tensor q = Tensor::from_host(std::vector<float>{0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0}, {6, 2});
  const ops::KeySets ks = ops::block_topk_keysets(host_ctx(), q, k, 2, 1);
  const HostBlockPack p(ks, 6, 2, 1);
  EXPECT_EQ(p.fs, (std::vector<int32_t>{0, 3, 4, 4}));
  EXPECT_EQ(p.seg, (std::vector<int32_t>{0, 5, 8, 10}));
  EXPECT_EQ(p.key_len, (std::vector<int32_t>{2, 2, 2}));
  EXPECT_EQ(p.row_token, (std::vector<int32_t>{0, 1, 2, 3, 5, 2, 3, 4, 4, 5}));
  EXPECT_EQ(p.is_key, (std::vector<int32_t>{1, 1, 0, 0, 0, 1, 1, 0, 1, 1}));
  EXPECT_EQ(p.is_query, std::vector<int32_t>(10, 1));
  EXPECT_EQ(p.own_row, (std::vector<int32_t>{0, 1, 5, 6, 8, 9}));
  EXPECT_EQ(p.pair_row, (std::vector<int32_t>{2, 3, 7, 4}));  // pairs of t2, t3, t4, t5
}

}  // namespace
}  // namespace sy
