// Attention over per-query key sets on CUDA (ops/sparse_attention.h): the
// work of every thread and the order of the launches are in
// ops/cuda/sparse_attention_rows.h; here are the buffers and the launches.
//
// sparse_attention_forward:   one thread per query (o, lse).
// sparse_attention_backward:  one thread per query (Delta, dq, and its pairs
//   as (key, query)); the transposed key sets by the stable radix sort of
//   cub_ops.h on the key's bits and segment_starts (util.cu), all on the
//   device, no copy back; then one thread per key (dk, dv) over its queries in
//   ascending order. No atomics: two runs give the same bits.
// local_keysets:  one thread per query, offsets in closed form (no scan, no
//   copy back).
// block_topk_keysets:  one thread per element of the block means, then one
//   thread per query: its top-k blocks by repeated selection (scores
//   recomputed each round: O((k+1) T/block D) per query, no score buffer),
//   offsets in closed form. The scores are rounded as the CPU rounds them
//   (dot_rn), so the key sets are the CPU's bit for bit, ties included.
// fp32 only; a bf16 head throws BackendError naming the op.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cub_ops.h"
#include "ops/cuda/sparse_attention_rows.h"
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
  return {q.data<float>(), k.data<float>(), v.data<float>(), T, D, 1.f / std::sqrt(static_cast<float>(D)),
          ks.off.data<int64_t>(), ks.idx.data<int32_t>()};
}

}  // namespace

void sparse_attention_forward(Ctx& ctx, const SparseAttentionArgs& a) {
  check_f32("sparse_attention_forward", {&a.q, &a.k, &a.v, &a.o, &a.lse});
  const sparse::Head h = head_of(a.q, a.k, a.v, a.keys);
  sparse::forward_steps(Launch{stream(ctx)}, h, a.o.data<float>(), a.lse.data<float>());
}

void sparse_attention_backward(Ctx& ctx, const SparseAttentionBackwardArgs& a) {
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
  sparse::backward_steps(Launch{stream(ctx)}, sort_and_starts, h, b);
}

KeySets local_keysets(Ctx& ctx, int64_t T, int64_t window) {
  KeySets ks;
  ks.off = Tensor::empty({T + 1}, DType::i64, ctx);
  ks.idx = Tensor::empty({sparse::local_offset(T, window)}, DType::i32, ctx);
  Launch{stream(ctx)}(T + 1, sparse::LocalKeys{T, window, ks.off.data<int64_t>(), ks.idx.data<int32_t>()});
  return ks;
}

KeySets block_topk_keysets(Ctx& ctx, const Tensor& q, const Tensor& k, int64_t block, int64_t topk) {
  check_f32("block_topk_keysets", {&q, &k});
  const int64_t T = q.dim(0), D = q.dim(1), nb = (T + block - 1) / block;
  SY_CHECK(T < (int64_t{1} << 31), "block top-k: " << T << " tokens (positions are 32-bit)");
  Tensor kmean = Tensor::empty({nb * D}, DType::f32, ctx);
  Launch{stream(ctx)}(nb * D, sparse::BlockMean{k.data<float>(), T, D, block, kmean.data<float>()});
  KeySets ks;
  ks.off = Tensor::empty({T + 1}, DType::i64, ctx);
  ks.idx = Tensor::empty({sparse::block_topk_offset(T, block, topk)}, DType::i32, ctx);
  Launch{stream(ctx)}(T + 1, sparse::BlockTopkKeys{q.data<float>(), kmean.data<float>(), T, D, block, topk,
                                                   ks.off.data<int64_t>(), ks.idx.data<int32_t>()});
  return ks;
}

}  // namespace sy::ops::cuda
