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
// Rows of q, k, v, o (and their gradients) are `ld` floats apart, so a head
// can be read in place from a packed (T, 3C) qkv buffer.
#pragma once
#include <cstdint>
#include <vector>

namespace sy::ops {

// Keys of query t: idx[off[t] .. off[t+1]).
struct KeySets {
  std::vector<int64_t> off{0};
  std::vector<int32_t> idx;
  int64_t queries() const { return static_cast<int64_t>(off.size()) - 1; }
  int64_t pairs() const { return static_cast<int64_t>(idx.size()); }
  void add_query(const std::vector<int32_t>& keys) {
    idx.insert(idx.end(), keys.begin(), keys.end());
    off.push_back(static_cast<int64_t>(idx.size()));
  }
};

struct HeadQKV {
  const float *q, *k, *v;
  int64_t ld, T, D;
};

struct HeadGrads {
  float *dq, *dk, *dv;  // accumulate, rows ld apart
  int64_t ld;
};

// o (T rows, ld_o apart), lse (T).
void sparse_attention_forward(float* o, int64_t ld_o, float* lse, const HeadQKV& h, const KeySets& ks);
void sparse_attention_backward(const HeadGrads& g, const float* dout, const float* o, int64_t ld_o,
                               const float* lse, const HeadQKV& h, const KeySets& ks);

// Causal sliding window: K(t) = {max(0, t-w+1) .. t} (a true sliding window
// of w keys, not block-local).
KeySets local_keysets(int64_t T, int64_t window);

// Block top-k (MoBA / NSA style, made causal per query): keys in blocks of
// `block`; query t scores each block that ends before its own block starts by
// q_t . mean(K_block), keeps the top `topk` (ties: lower block), and always
// keeps its own block up to t. Per query rather than per query block, because
// a block-mean of queries would let t see later queries of its block.
KeySets block_topk_keysets(const HeadQKV& h, int64_t block, int64_t topk);

}  // namespace sy::ops
