// Attention over per-query key sets: the common core of local, block top-k
// and routed attention (one head of one sequence at a time).
//
//   s_tj = q_t . k_j / sqrt(D)          for j in K(t)
//   lse_t = log sum_{j in K(t)} exp(s_tj)     a_tj = exp(s_tj - lse_t)
//   o_t = sum_j a_tj v_j                (K(t) empty: o_t = 0, lse_t = -inf)
//
// Backward (FlashAttention's form, from the saved lse and o):
//   dv_j += a_tj do_t;  Delta_t = do_t . o_t;  ds_tj = a_tj (do_t . v_j - Delta_t)
//   dq_t += sum_j ds_tj k_j / sqrt(D);  dk_j += ds_tj q_t / sqrt(D)
//
// Shapes: q, k, v, o and their gradients (T, D), contiguous (a head of a
// sequence, e.g. a rows() view of a (B*H*T, D) head-major tensor); lse (T).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

// Block top-k's key sets packed for CUDA's tiled varlen kernels, one segment
// per key block (ops/cuda/block_topk_pack.h): made with the key sets by
// CUDA's block_topk_keysets (head dims 16, 32, 64, 128), read by its
// sparse attention forward and backward; empty elsewhere.
struct BlockSegments {
  int64_t block = 0, topk = 0;
  int64_t rows = 0, max_len = 0;      // packed rows; >= the longest segment
  Tensor seg, key_len;                // i32 (blocks + 1), (blocks)
  Tensor row_token, is_query, is_key;  // i32 (rows)
  Tensor own_row, pair_row;           // i32 (T), (pairs): a token's rows
  bool defined() const { return seg.defined(); }
};

// Keys of query t: idx[off[t] .. off[t+1]), positions within the sequence.
struct KeySets {
  Tensor off;  // i64 (T+1)
  Tensor idx;  // i32 (pairs)
  // The pairs, where only they were counted and off, idx were left undefined
  // (routed attention's forward with key_sets = false; 0 where the count
  // went to the caller's pair_count in device memory instead); -1 otherwise.
  int64_t counted = -1;
  BlockSegments blocks;  // block top-k's packing, where a backend made one
  int64_t queries() const { return off.defined() ? off.numel() - 1 : 0; }
  int64_t pairs() const { return idx.defined() ? idx.numel() : (counted > 0 ? counted : 0); }
};

// Builds KeySets on the host, query by query.
class KeySetsBuilder {
 public:
  void add_query(const std::vector<int32_t>& keys);
  KeySets build(Ctx& ctx) const;

 private:
  std::vector<int64_t> off_{0};
  std::vector<int32_t> idx_;
};

struct SparseAttentionArgs {
  Tensor& o;
  Tensor& lse;
  const Tensor& q;
  const Tensor& k;
  const Tensor& v;
  const KeySets& keys;
};

struct SparseAttentionBackwardArgs {
  Tensor& dq;  // accumulate
  Tensor& dk;
  Tensor& dv;
  const Tensor& dout;
  const Tensor& o;
  const Tensor& lse;
  const Tensor& q;
  const Tensor& k;
  const Tensor& v;
  const KeySets& keys;
};

void sparse_attention_forward(Ctx& ctx, const SparseAttentionArgs& a);
void sparse_attention_backward(Ctx& ctx, const SparseAttentionBackwardArgs& a);

// Causal sliding window: K(t) = {max(0, t-w+1) .. t} (a true sliding window
// of w keys, not block-local).
KeySets local_keysets(Ctx& ctx, int64_t T, int64_t window);

// Block top-k (MoBA / NSA style, made causal per query): keys in blocks of
// `block`; query t scores each block that ends before its own block starts by
// q_t . mean(K_block), keeps the top `topk` (ties: lower block), and always
// keeps its own block up to t. Per query rather than per query block, because
// a block-mean of queries would let t see later queries of its block.
KeySets block_topk_keysets(Ctx& ctx, const Tensor& q, const Tensor& k, int64_t block, int64_t topk);

// Block top-k's parts for one query on the host, which the CPU's
// block_topk_keysets applies to every query and decoding with a key/value
// cache (runtime/sparse_self_attention.h) to one. block_key_mean: the mean
// of n key rows (D values each, rows `stride` floats apart), summed in row
// order then divided. block_topk_query_keys: the keys of query t (q, D
// values) given `means`, the key means of the t / block complete blocks
// before its own (D values each): the top `topk` blocks by q . mean (ties:
// the lower block; a NaN score ranks as -inf), in block order, then its own
// block up to t.
// (scratch: buffers kept between calls, or null.)
struct BlockTopkScratch {
  std::vector<float> score;
  std::vector<int64_t> order;
};
void block_key_mean(float* mean, const float* k, int64_t n, int64_t stride, int64_t D);
void block_topk_query_keys(std::vector<int32_t>& keys, const float* q, const float* means, int64_t t, int64_t D,
                           int64_t block, int64_t topk, BlockTopkScratch* scratch = nullptr);

// The CPU reference (ops/cpu/sparse_attention.cc) and the CUDA kernels
// (ops/cuda/sparse_attention.cu, f32, and bf16 on block top-k's packed path
// at head dims 64 and 128; CUDA builds, the key sets made on the device equal
// to the CPU's exactly): the entry points above, in cpu:: and cuda::. Dtypes:
// q, k, v and the outputs all f32 or all bf16 (the CPU: the f32 path on the
// values, results rounded), lse f32; block top-k chooses on the values
// widened to f32.
SY_DECLARE_BACKENDS(
  void sparse_attention_forward(Ctx& ctx, const SparseAttentionArgs& a);
  void sparse_attention_backward(Ctx& ctx, const SparseAttentionBackwardArgs& a);
  KeySets local_keysets(Ctx& ctx, int64_t T, int64_t window);
  KeySets block_topk_keysets(Ctx& ctx, const Tensor& q, const Tensor& k, int64_t block, int64_t topk);
)

}  // namespace sy::ops
