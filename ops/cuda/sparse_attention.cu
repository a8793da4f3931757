// Attention over per-query key sets on CUDA (ops/sparse_attention.h): the
// work of every thread and the order of the launches are in
// ops/cuda/sparse_attention_rows.h; here are the buffers and the launches.
//
// sparse_attention_forward:   one warp per query (o, lse).
// sparse_attention_backward:  one warp per query (Delta, dq, and its pairs
//   as (key, query)); the transposed key sets by the stable radix sort of
//   cub_ops.h on the key's bits and segment_starts (util.cu), all on the
//   device, no copy back; then one warp per key (dk, dv) over its queries in
//   ascending order. No atomics: two runs give the same bits. Head dims up
//   to 512 (each lane up to 16 values of a row in registers).
// local_keysets:  one thread per query, offsets in closed form (no scan, no
//   copy back).
// block_topk_keysets:  one thread per element of the block means, the scores
//   q_t . mean(K_b) once in 32 x 32 tiles (block-major, the causal triangle
//   only), then one thread per query: its top-k blocks by repeated selection
//   over its row of scores (a warp of queries reads each block's scores
//   together), offsets in closed form. (Before: each round recomputed the
//   scores, O((k+1) T/block D) per query on one thread.) The scores are rounded as the CPU rounds them
//   (dot_rn), so the key sets are the CPU's bit for bit, ties included.
//   Head dims 16-128 are then packed one segment per key block
//   (ops/cuda/block_topk_pack.h: a stable radix sort of the (block, query)
//   pairs inverts the choice; nothing is read back), and the attention over
//   such key sets runs on the tiled varlen kernels with a key prefix per
//   segment, merged per query.
// fp32, and bf16 on the packed path (block top-k's key sets at head dims 64
// and 128: the tensor-core varlen kernels; the choice made on the values
// widened to f32); other bf16 heads throw BackendError naming the op.
#include "ops/cuda/attention_varlen.h"
#include "ops/cuda/block_topk_pack.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cub_ops.h"
#include "ops/cuda/packed_gather.cuh"
#include "ops/cuda/packed_rows.h"
#include "ops/cuda/sparse_attention_rows.h"
#include "ops/elementwise.h"
#include "ops/sparse_attention.h"

#include <cmath>
#include <initializer_list>
#include <string>

namespace sy::ops::cuda {

namespace {

void check_f32(const char* op, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->dtype() != DType::f32)
      throw BackendError(std::string(op) + ": " + dtype_name(t->dtype()) + " tensors have no CUDA kernel (f32 only)");
}

sparse::Head head_of(const Tensor& q, const Tensor& k, const Tensor& v, const KeySets& ks) {
  const int64_t T = q.dim(0), D = q.dim(1);
  SY_CHECK(T < (int64_t{1} << 31), "sparse attention: " << T << " tokens (positions are 32-bit)");
  if (sparse::lane_values(D) == 0)
    throw BackendError("sparse attention: head dim " + std::to_string(D) + " has no CUDA kernel (at most " +
                       std::to_string(32 * sparse::kMaxLaneValues) + ")");
  return {q.data<float>(), k.data<float>(), v.data<float>(), T, D, 1.f / std::sqrt(static_cast<float>(D)),
          ks.off.data<int64_t>(), ks.idx.data<int32_t>()};
}

// Block top-k's key sets as varlen segments (ops/cuda/block_topk_pack.h).
BlockSegments pack_blocks(Ctx& ctx, const KeySets& ks, int64_t T, int64_t block, int64_t topk) {
  const blocktopk::Shape sh{T, block, topk};
  const int64_t P = sh.pairs(), nb = sh.blocks();
  const int pos_bits = routed::position_bits(T);
  SY_CHECK(sh.rows() < INT32_MAX && pos_bits + bits_for(nb) <= 64,
           "block top-k: " << T << " tokens with top-" << topk << " give " << sh.rows() << " packed rows (2^31 at most)");
  BlockSegments b;
  b.block = block, b.topk = topk, b.rows = sh.rows();
  Tensor keys = Tensor::empty({2 * std::max<int64_t>(P, 1)}, DType::i64, ctx);
  Tensor values = Tensor::empty({2 * std::max<int64_t>(P, 1)}, DType::i32, ctx);
  auto* k_in = reinterpret_cast<uint64_t*>(keys.data<int64_t>());
  int32_t* v_in = values.data<int32_t>();
  const Launch run{stream(ctx)};
  run(T, blocktopk::PairKeys{sh, ks.off.data<int64_t>(), ks.idx.data<int32_t>(), pos_bits, k_in, v_in});
  if (P > 0) radix_sort_pairs(ctx, k_in, k_in + P, v_in, v_in + P, P, 0, pos_bits + bits_for(nb));
  Tensor fs = Tensor::empty({nb + 1}, DType::i32, ctx);
  segment_starts(ctx, k_in + P, P, pos_bits, nb, fs.data<int32_t>());
  b.seg = Tensor::empty({nb + 1}, DType::i32, ctx);
  b.key_len = Tensor::empty({nb}, DType::i32, ctx);
  run(nb + 1, blocktopk::Segments{sh, fs.data<int32_t>(), b.seg.data<int32_t>(), b.key_len.data<int32_t>()});
  b.row_token = Tensor::empty({b.rows}, DType::i32, ctx);
  b.is_query = Tensor::empty({b.rows}, DType::i32, ctx);
  b.is_key = Tensor::empty({b.rows}, DType::i32, ctx);
  b.own_row = Tensor::empty({T}, DType::i32, ctx);
  b.pair_row = Tensor::empty({std::max<int64_t>(P, 1)}, DType::i32, ctx);
  const blocktopk::Rows rows{b.row_token.data<int32_t>(), b.is_query.data<int32_t>(), b.is_key.data<int32_t>(),
                             b.own_row.data<int32_t>(), b.pair_row.data<int32_t>()};
  run(T, blocktopk::OwnRows{sh, fs.data<int32_t>(), rows});
  run(P, blocktopk::PairRows{sh, k_in + P, v_in + P, fs.data<int32_t>(), b.seg.data<int32_t>(), pos_bits, rows});
  // A bound on every segment (a block, and at most every later query): the
  // varlen grid is a work list built on the device, so nothing is read back.
  b.max_len = std::min<int64_t>(T, block) + T;
  return b;
}

VarlenAttention varlen_of(const BlockSegments& b, int64_t T, int64_t D) {
  VarlenAttention v;
  v.segments = blocktopk::Shape{T, b.block, b.topk}.blocks();
  v.max_len = b.max_len;
  v.rows = b.rows;
  v.C = D, v.H = 1;
  v.seg = b.seg.data<int32_t>();
  v.is_query = b.is_query.data<int32_t>();
  v.is_key = b.is_key.data<int32_t>();
  v.key_len = b.key_len.data<int32_t>();
  return v;
}

// Whether the attention over ks runs on the packed segments (f32, or bf16
// at head dims 64 and 128: the tensor-core kernels).
bool packed(const KeySets& ks, const Tensor& q) {
  return ks.blocks.defined() && tiled_head_dim(q.dtype(), q.dim(1)) && ks.blocks.own_row.numel() == q.dim(0);
}

blocktopk::TokenRows token_rows(const BlockSegments& b, int64_t T) {
  return {blocktopk::Shape{T, b.block, b.topk}, b.own_row.data<int32_t>(), b.pair_row.data<int32_t>()};
}

template <class E>
Tensor gather_rows(Ctx& ctx, const BlockSegments& b, const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t D = q.dim(1);
  Tensor qkv = Tensor::empty({b.rows, 3 * D}, q.dtype(), ctx);
  gather_qkv_rows<E>(Launch{stream(ctx)}, b.rows,
                     {elems<E>(q), elems<E>(k), elems<E>(v), b.row_token.data<int32_t>(), D, elems<E>(qkv)});
  return qkv;
}

template <class E>
void packed_forward(Ctx& ctx, const SparseAttentionArgs& a) {
  const BlockSegments& b = a.keys.blocks;
  const int64_t T = a.q.dim(0), D = a.q.dim(1);
  const Tensor qkv = gather_rows<E>(ctx, b, a.q, a.k, a.v);
  Tensor out = Tensor::empty({b.rows, D}, a.q.dtype(), ctx), lse = Tensor::empty({1, b.rows}, DType::f32, ctx);
  varlen_attention_forward(ctx, varlen_of(b, T, D), qkv, out, lse);
  Launch{stream(ctx)}(T * D, blocktopk::MergeForward<E>{token_rows(b, T), elems<E>(out), lse.data<float>(), D,
                                                        elems<E>(a.o), a.lse.data<float>()});
}

template <class E>
void packed_backward(Ctx& ctx, const SparseAttentionBackwardArgs& a) {
  const BlockSegments& b = a.keys.blocks;
  const int64_t T = a.q.dim(0), D = a.q.dim(1);
  const DType dt = a.q.dtype();
  const Tensor qkv = gather_rows<E>(ctx, b, a.q, a.k, a.v);
  Tensor dout = Tensor::empty({b.rows, D}, dt, ctx), out = Tensor::empty({b.rows, D}, dt, ctx),
         lse = Tensor::empty({1, b.rows}, DType::f32, ctx), dqkv = Tensor::zeros({b.rows, 3 * D}, dt, ctx);
  const Launch run{stream(ctx)};
  gather_grad_rows<E>(run, b.rows,
                      {elems<E>(a.dout), elems<E>(a.o), a.lse.data<float>(), b.row_token.data<int32_t>(),
                       b.is_query.data<int32_t>(), D, elems<E>(dout), elems<E>(out), lse.data<float>()});
  varlen_attention_backward(ctx, varlen_of(b, T, D), dqkv, dout, qkv, out, lse);
  run(T * D, blocktopk::ScatterBackward<E>{token_rows(b, T), elems<E>(dqkv), D, elems<E>(a.dq), elems<E>(a.dk),
                                           elems<E>(a.dv)});
}

}  // namespace

void sparse_attention_forward(Ctx& ctx, const SparseAttentionArgs& a) {
  if (packed(a.keys, a.q))
    return a.q.dtype() == DType::bf16 ? packed_forward<Bf16>(ctx, a) : packed_forward<routed::F32>(ctx, a);
  check_f32("sparse_attention_forward", {&a.q, &a.k, &a.v, &a.o, &a.lse});
  const sparse::Head h = head_of(a.q, a.k, a.v, a.keys);
  sparse::with_lane_values(h.D, [&](auto v) {
    sparse::forward_steps<decltype(v)::value>(WarpLaunch{stream(ctx)}, h, a.o.data<float>(), a.lse.data<float>());
  });
}

void sparse_attention_backward(Ctx& ctx, const SparseAttentionBackwardArgs& a) {
  if (packed(a.keys, a.q))
    return a.q.dtype() == DType::bf16 ? packed_backward<Bf16>(ctx, a) : packed_backward<routed::F32>(ctx, a);
  check_f32("sparse_attention_backward", {&a.q, &a.k, &a.v, &a.o, &a.lse, &a.dout, &a.dq, &a.dk, &a.dv});
  const sparse::Head h = head_of(a.q, a.k, a.v, a.keys);
  const int64_t P = a.keys.pairs();
  Tensor delta = Tensor::empty({h.T}, DType::f32, ctx);
  Tensor pair_key = Tensor::empty({P}, DType::i64, ctx), sorted_key = Tensor::empty({P}, DType::i64, ctx);
  Tensor pair_query = Tensor::empty({P}, DType::i32, ctx), key_query = Tensor::empty({P}, DType::i32, ctx);
  Tensor koff = Tensor::empty({h.T + 1}, DType::i32, ctx);
  auto* keys_in = reinterpret_cast<uint64_t*>(pair_key.data<int64_t>());
  auto* keys_out = reinterpret_cast<uint64_t*>(sorted_key.data<int64_t>());
  const sparse::BackwardBuffers b{a.dout.data<float>(),      a.o.data<float>(),         a.lse.data<float>(),
                                  delta.data<float>(),       keys_in,                   pair_query.data<int32_t>(),
                                  keys_out,                  key_query.data<int32_t>(), koff.data<int32_t>(),
                                  a.dq.data<float>(),        a.dk.data<float>(),        a.dv.data<float>()};
  // Keys are positions below T: bits_for(T) bits hold them (0 bits for T = 1:
  // the sort is then a copy, every key being 0).
  auto sort_and_starts = [&] {
    radix_sort_pairs(ctx, keys_in, keys_out, pair_query.data<int32_t>(), key_query.data<int32_t>(), P, 0,
                     bits_for(h.T));
    segment_starts(ctx, keys_out, P, 0, h.T, koff.data<int32_t>());
  };
  sparse::with_lane_values(h.D, [&](auto v) {
    sparse::backward_steps<decltype(v)::value>(WarpLaunch{stream(ctx)}, sort_and_starts, h, b);
  });
}

KeySets local_keysets(Ctx& ctx, int64_t T, int64_t window) {
  KeySets ks;
  ks.off = Tensor::empty({T + 1}, DType::i64, ctx);
  ks.idx = Tensor::empty({sparse::local_offset(T, window)}, DType::i32, ctx);
  Launch{stream(ctx)}(T + 1, sparse::LocalKeys{T, window, ks.off.data<int64_t>(), ks.idx.data<int32_t>()});
  return ks;
}

namespace {
// BlockScores (sparse_attention_rows.h) in tiles of 32 queries x 32 blocks:
// both tiles in shared memory (rows padded to D + 1 floats: a warp's 32
// query rows fall in 32 banks), each thread one score, its products and sums
// in dot_rn's order - the functor's bits. Tiles wholly above the causal
// triangle (no query of the tile ranks a block that late: b < t / block)
// are skipped; their scores are never read.
constexpr int kScoreTile = 32;
constexpr int kScoreMaxD = 128;  // shared memory: 2 x 32 x 129 floats = 33 KiB

__global__ void __launch_bounds__(kScoreTile * kScoreTile) block_scores_kernel(const float* __restrict__ q, const float* __restrict__ kmean, int64_t T, int D,
                                    int64_t nb, int64_t block, float* __restrict__ scores) {
  extern __shared__ float tiles[];
  const int ld = D + 1;
  float* sq = tiles;
  float* sk = tiles + kScoreTile * ld;
  const int64_t t0 = int64_t(blockIdx.x) * kScoreTile, b0 = int64_t(blockIdx.y) * kScoreTile;
  const int64_t t_last = min(T, t0 + kScoreTile) - 1;
  if (b0 >= t_last / block) return;  // (the whole block returns: before any barrier)
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int i = ty * kScoreTile + tx; i < kScoreTile * D; i += kScoreTile * kScoreTile) {
    const int r = i / D, d = i % D;
    sq[r * ld + d] = t0 + r < T ? q[(t0 + r) * D + d] : 0.f;
    sk[r * ld + d] = b0 + r < nb ? kmean[(b0 + r) * D + d] : 0.f;
  }
  __syncthreads();
  const int64_t t = t0 + tx, b = b0 + ty;
  if (t >= T || b >= nb) return;
  float acc = 0.f;
  for (int d = 0; d < D; ++d) acc = __fadd_rn(acc, __fmul_rn(sq[tx * ld + d], sk[ty * ld + d]));
  scores[b * T + t] = acc;
}
}  // namespace

KeySets block_topk_keysets(Ctx& ctx, const Tensor& q_in, const Tensor& k_in, int64_t block, int64_t topk) {
  // bf16 heads choose on their values widened to f32 (exact), as the CPU does.
  auto widened = [&ctx](const Tensor& t) {
    if (t.dtype() != DType::bf16) return t;
    Tensor w = Tensor::empty(t.shape(), DType::f32, ctx);
    to_f32(ctx, w, t);
    return w;
  };
  const Tensor q = widened(q_in), k = widened(k_in);
  check_f32("block_topk_keysets", {&q, &k});
  const int64_t T = q.dim(0), D = q.dim(1), nb = (T + block - 1) / block;
  SY_CHECK(T < (int64_t{1} << 31), "block top-k: " << T << " tokens (positions are 32-bit)");
  Tensor kmean = Tensor::empty({nb * D}, DType::f32, ctx);
  Launch{stream(ctx)}(nb * D, sparse::BlockMean{k.data<float>(), T, D, block, kmean.data<float>()});
  KeySets ks;
  ks.off = Tensor::empty({T + 1}, DType::i64, ctx);
  ks.idx = Tensor::empty({sparse::block_topk_offset(T, block, topk)}, DType::i32, ctx);
  // The scores once, in tiles, where they fit (D <= 128, up to 2^28 of them:
  // 1 GiB); else each query computes its own (once each up to 16 kept
  // blocks; past that the rounds recompute them).
  Tensor scores;
  if (D <= kScoreMaxD && T > 0 && nb * T <= (int64_t{1} << 28)) {
    scores = Tensor::empty({nb * T}, DType::f32, ctx);
    const dim3 grid(static_cast<unsigned>((T + kScoreTile - 1) / kScoreTile),
                    static_cast<unsigned>((nb + kScoreTile - 1) / kScoreTile));
    const size_t smem = 2 * kScoreTile * (D + 1) * sizeof(float);
    block_scores_kernel<<<grid, dim3(kScoreTile, kScoreTile), smem, stream(ctx)>>>(
        q.data<float>(), kmean.data<float>(), T, static_cast<int>(D), nb, block, scores.data<float>());
    CUDA_CHECK(cudaGetLastError());
  }
  Launch{stream(ctx)}(T + 1, sparse::BlockTopkKeys{q.data<float>(), kmean.data<float>(), T, D, block, topk,
                                                   ks.off.data<int64_t>(), ks.idx.data<int32_t>(),
                                                   scores.defined() ? scores.data<float>() : nullptr});
  if (tiled_head_dim(DType::f32, D) && T > 0) ks.blocks = pack_blocks(ctx, ks, T, block, topk);
  return ks;
}

}  // namespace sy::ops::cuda
