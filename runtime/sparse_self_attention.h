// SparseSelfAttention: a block's attention when attention.kind is ROUTED or
// BLOCK_TOPK (configs/switchyard.proto, AttentionConfig).
//
//   ROUTED:     heads [0, H - R) are local (causal sliding window: the dense
//               attention op with AttentionShape::window, whose tiled kernels
//               visit only the key tiles a window reaches), heads [H - R, H)
//               attend within content clusters (ops/routed_attention.h)
//   BLOCK_TOPK: every head attends to its own block and its top-k earlier
//               blocks (ops/sparse_attention.h)
//   y = proj(concat_h attention_h(qkv(x)))
//
// With grouped-query attention (model.n_kv_heads G < H) qkv projects to
// [q (H heads) | k (G) | v (G)], and expand_kv_heads widens it (after RoPE)
// to the packed row of H heads each that the local, routing and block top-k
// heads read, as the dense layer does (runtime/layers.h): a routing head
// clusters its query heads' shared keys. Its backward sums the copies'
// gradients (reduce_kv_heads) before RoPE's backward.
//
// With rotary positions (model.position ROPE) q and k of every head are
// rotated (ops/rope.h) right after qkv, before anything else sees them: the
// routing heads' layer norm and clustering, the centroids' k-means and EMA,
// the block top-k scores and every head's attention all work on rotated q
// and k, so clusters see positions the same way the attention does.
//
// Centroids live per block and routing head, or in one set per routing head
// shared by all routed blocks (share_centroids). Causality in training as in
// evaluation: a token's membership may depend only on tokens up to it and on
// centroids fixed before the step. So the centroids are initialised by
// k-means on a warm-up batch the loss never sees (calibrate(); the trainer
// draws one before the first step), a training forward only accumulates the
// per-cluster counts and sums, and update_centroids() applies the EMA after
// the step (Transformer::end_step), the statistics first passing through
// `stats_reducer` (the data-parallel sum). Updating inside the forward would
// let this batch's later tokens move the clusters that its earlier tokens
// join (through the next layer, with shared centroids).
#pragma once
#include <functional>
#include <utility>
#include <vector>

#include "ops/routed_attention.h"
#include "runtime/config.h"
#include "runtime/layers.h"

namespace sy {

// round(sqrt(seq_len)) when num_clusters is 0.
int64_t cluster_count(const switchyard::AttentionConfig& a, int64_t seq_len);

struct SparseAttentionSpec {
  switchyard::AttentionConfig cfg;
  int64_t seq_len;
  std::vector<ops::Centroids>* shared;  // per routing head, or null: own centroids
  uint64_t seed;
};

struct SparseAttentionStats {
  double pair_fraction = 0;       // query-key pairs computed / dense causal pairs
  double cluster_size_mean = 0;   // routing heads: members per non-empty cluster
  double cluster_size_max = 0;
  double centroid_drift = 0;      // mean |mu_new - mu_old| in the last update
  double commitment_loss = 0;
};

// Query-key pairs of one sequence of n tokens, per layer: {this config, dense}.
// k: the layer's cluster count (routed attention); 0 takes cluster_count(a,
// n). A depth-routed block attends over its kept n < seq_len tokens with the
// clusters its layer made for seq_len: cluster_count(a, seq_len).
struct AttentionPairs {
  double sparse, dense;
};
AttentionPairs attention_pairs(const switchyard::AttentionConfig& a, int64_t n, int64_t n_heads, int64_t k = 0);

class SparseSelfAttention : public SelfAttention {
 public:
  SparseSelfAttention(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t H,
                      const SparseAttentionSpec& spec, Rng& rng, float std, float out_std,
                      const AttentionOptions& options = {});
  using SelfAttention::forward;
  Tensor forward(const Tensor& x, int64_t B, int64_t T, const Tensor& positions) override;
  Tensor backward(const Tensor& dy) override;
  void release() override;
  // A repeated training forward adds nothing to the centroids' statistics.
  void set_replay(bool r) override { replay_ = r; }
  void set_training(bool t) override { training_ = t; }
  // The next forward (in evaluation mode) initialises any uninitialised
  // centroids by k-means on its own normalised queries: a warm-up batch.
  void calibrate_next_forward() { calibrating_ = true; }
  bool needs_calibration() const;
  // Applies the EMA update from the statistics of the training forwards since
  // the last update; returns the mean centroid drift.
  double update_centroids();
  double forward_flops() const override { return flops_; }
  double flops(int64_t B, int64_t T) const override;
  bool reads_bf16() const override { return qkv_.reads_bf16(); }
  // Decoding (SelfAttention::decode), as the windowed forward computes the
  // token's row. A ROUTED layer in causal assignment (BALANCED looks at the
  // whole window: kv_width() 0): a local head attends to the last
  // attention.window cached rows, itself included; a routing head puts the
  // token's query and key each in its nearest centroid's cluster (a
  // cluster's capacity, not dropless, counted from the window's first
  // token, as tokens choose by position) and attends to the cached keys of
  // its query's cluster, or to itself where there is none (no cluster,
  // capacity-dropped: 0). state.counts: per routing head the cluster of each
  // cached key (-1: dropped), then the query and key counts per cluster.
  // BLOCK_TOPK: each head scores the complete blocks before its own by
  // q . mean(K_block) and attends to its top-k and its own block up to the
  // token; state.values: the mean of each key head's complete blocks, made
  // as the block's last key is cached. Both by the functions the CPU's
  // block_topk_keysets applies to every query (ops/sparse_attention.h's
  // block_key_mean, block_topk_query_keys): the forward's choice on the same
  // values (one row's projection may round otherwise than the window's, which
  // can flip a near tie, as for the clusters and the experts).
  Tensor decode(const Tensor& x, int64_t pos, int64_t row, Tensor& k, Tensor& v, DecodeState& state) override;
  int64_t kv_width() const override {
    return !routed() || cfg_.assignment() == switchyard::AttentionConfig::CAUSAL ? G_ * D_ : 0;
  }
  DecodeState decode_state(int64_t rows) const override;
  // decode_state's sizes: (counts, values). Per routing head the cluster of
  // each cached key, then the query and key counts per cluster; per key
  // head of block top-k the means of its blocks.
  std::pair<size_t, size_t> decode_state_sizes(int64_t rows) const;
  double aux_loss() const override { return stats_.commitment_loss; }
  const SparseAttentionStats& stats() const { return stats_; }
  // Sums per-cluster statistics over data-parallel ranks before the EMA update.
  void set_stats_reducer(std::function<void(Tensor&)> f) { reducer_ = std::move(f); }
  // Sends rank 0's centroids to every rank after the warm-up k-means (each
  // rank's warm-up slice differs; replicas must start from the same ones).
  void set_centroid_broadcaster(std::function<void(Tensor&)> f) { broadcaster_ = std::move(f); }
  const std::vector<ops::Centroids>& centroids() const { return *centroids_; }
  std::vector<ops::Centroids>& centroids() { return *centroids_; }
  // Whether the centroids are this block's own (not the shared set).
  bool owns_centroids() const { return centroids_ == &own_; }

 private:
  bool routed() const { return cfg_.kind() == switchyard::AttentionConfig::ROUTED; }
  // Heads [first_head(), H) attend apart from the dense kernels: the routing
  // heads, all of them and every sequence in one stacked call
  // (ops/routed_attention.h's Clusters), or every head of BLOCK_TOPK, one at
  // a time; q_, k_, v_, o_, lse_ hold those heads only.
  int64_t first_head() const { return routed() ? H_ - R_ : 0; }
  // opt_.bf16 (precision BF16, head dim 64 or 128) runs every head on the
  // bf16 tensor-core kernels: a routed layer's local heads, its routing heads
  // (either mode: ops/routed_attention.h's bf16 path) and block top-k's
  // (ops/sparse_attention.h's packed path); q, k, v of heads [first_head(), H)
  // rounded once per step.
  bool bf16_heads() const { return opt_.bf16; }
  // The cached rows head h (of H) attends to in decoding the row-th token
  // (SparseSelfAttention::decode): in position order; empty: o = 0.
  std::vector<int64_t> decode_keys(int64_t h, const float* qkv, int64_t row, const Tensor& k, DecodeState& state);
  // The local heads [0, L) of a ROUTED layer, as the dense op computes them.
  ops::AttentionShape local_shape() const;

  Ctx& ctx_;
  switchyard::AttentionConfig cfg_;
  Linear qkv_, proj_;
  AttentionOptions opt_;
  int64_t C_, H_, G_, D_, R_, K_;  // G_: key/value heads (H_ without grouping)
  // [q (H heads) | k (G) | v (G)]: the qkv projection's width.
  int64_t qkv_width() const { return C_ + 2 * G_ * D_; }
  std::vector<ops::Centroids> own_;
  std::vector<ops::Centroids>* centroids_;
  Rng rng_;
  bool training_ = true;
  bool replay_ = false;
  bool calibrating_ = false;
  std::function<void(Tensor&)> reducer_, broadcaster_;
  std::vector<ops::ClusterStats> pending_;  // per routing head, since the last update
  // saved for backward
  int64_t B_ = 0, T_ = 0;
  Tensor positions_;                       // i32 (B*T) or undefined (RoPE)
  Tensor q_, k_, v_, o_;                   // (H - first_head(), B*T, D): block j is head first_head() + j,
                                           // its rows [b*T, (b+1)*T) sequence b
  Tensor lse_;                             // (H - first_head(), B*T)
  Tensor qkv_out_, y_, local_lse_;         // local heads: qkv (B*T, 3C), y (B*T, C), lse (B, H, T)
  Tensor qkv16_, y16_;                     // bf16: what the local heads' kernels read and wrote
  Tensor q16_, k16_, v16_, o16_;           // bf16 heads [first_head(), H): what their attention read and wrote
  std::vector<ops::KeySets> keys_;         // BLOCK_TOPK: (H, B), keys_[h * B + b]
  ops::KeySets routed_keys_;               // ROUTED: the routing heads' (stacked)
  ops::RoutedSaved routed_saved_;          // ROUTED: the forward's packing, for the backward
  Tensor qn_, qn_mean_, qn_rstd_;          // the routing heads' normalised queries (R*B*T, D), as q_
  ops::Clusters clusters_;                 // R*B stacked heads, head r*B + b: routing head r, sequence b
  SparseAttentionStats stats_;
  double commit_count_ = 0;  // assigned queries in the commitment mean
  double flops_ = 0;
};

}  // namespace sy
