// A decoder-only, pre-norm transformer over bytes (GPT-2 layout by default):
//
//   h0 = wte[x] + wpe[t]
//   h' = h + Attn(LN1(h));   h'' = h' + FFN(LN2(h'))      per block
//   logits = LN_f(h_L) W_head;  loss = CE(logits, next byte)
//
// FFN is a dense MLP, or a MoE layer on the blocks the config routes.
// Model options (configs/switchyard.proto, ModelConfig), each off by default:
//   position ROPE:  no wpe; q and k rotated in every attention (ops/rope.h)
//   norm RMSNORM:   LN1, LN2, LN_f are RMSNorms (ops/rmsnorm.h)
//   activation SWIGLU: dense and expert FFNs (ops/swiglu.h)
//   bias false:     no bias in any Linear layer or expert FFN
//   tie_embeddings: logits = LN_f(h_L) wte^T, no head.w; wte's gradient is
//                   the sum of the embedding's and the head's.
// forward() saves every activation backward() needs; backward() accumulates
// into the ParamStore's gradients (call params().zero_grad() between steps:
// the expert ones are then written by the next backward, not added to, and
// every gradient is complete when backward() returns: finish_grads).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "ops/embedding.h"
#include "runtime/config.h"
#include "runtime/data.h"
#include "runtime/layers.h"
#include "runtime/depth_router.h"
#include "runtime/moe_layer.h"
#include "runtime/sparse_self_attention.h"

namespace sy {

// The layer options a ModelConfig asks for.
NormKind norm_kind(const switchyard::ModelConfig& m);
FfnOptions ffn_options(const switchyard::ModelConfig& m);
AttentionOptions attention_options(const switchyard::ModelConfig& m);
// Whether dense attention runs on bf16 q, k, v: precision BF16 and a head dim
// with tensor-core kernels (64 or 128, ops/attention.h); other head dims keep
// fp32 attention, on the CPU too, so both backends take the same path.
bool bf16_attention(const switchyard::Config& cfg);

// x -> x + Attn(LN1(x)) -> + FFN(LN2(.)); on a depth-routed block only the
// tokens the DepthRouter picks go through (attending among themselves), and
// the rest pass unchanged. With recomputation (train.recompute) a training
// forward keeps only x, and backward runs the forward again first: the
// block's activations live from that repeat to the end of its backward (an
// evaluation forward keeps none). Every block drops its activations at the
// end of its backward.
class Block {
 public:
  Block(Ctx& ctx, ParamStore& ps, const std::string& name, const switchyard::ModelConfig& m,
        std::unique_ptr<FeedForward> ffn, Rng& rng,
        const switchyard::DepthConfig* depth = nullptr,
        const SparseAttentionSpec* sparse = nullptr, bool bf16_attention = false);
  Tensor forward(const Tensor& x, int64_t B, int64_t T);
  Tensor backward(const Tensor& dy);
  // One token (1, C) at position pos through the block with its part of the
  // cache (SelfAttention::decode, FeedForward::decode; rows: the tokens its
  // attention holds, which it advances); evaluation mode. A depth-routed
  // block (its predictor at evaluation) runs on the token or passes it on,
  // as in a forward over the window, its attention holding only the tokens
  // it kept.
  Tensor decode(const Tensor& x, int64_t pos, Tensor& k, Tensor& v, std::vector<int64_t>& counts, int64_t& rows,
                DecodeState& attn);
  void set_training(bool t);
  void set_recompute(bool r) { recompute_ = r; }
  // The block's FFN is a MoE layer (on `ranks` ranks): a depth-routed block
  // then evaluates one sequence a call, B calls on every rank (run_forward).
  void set_moe(bool moe, int ranks) { moe_ = moe, ranks_ = ranks; }
  FeedForward& ffn() { return *ffn_; }
  SelfAttention& attention() const { return *attn_; }
  DepthRouter* depth() const { return depth_.get(); }
  double forward_flops() const { return flops_; }
  // What the same block would have spent dense: dense attention, the dense
  // FFN (model.ffn_hidden) in the FFN position, every token processed.
  double dense_flops() const { return dense_flops_; }
  // The last forward's FLOPs by part (they sum to forward_flops()): attention,
  // the FFN or experts (shared expert included), and the routers (MoE gate,
  // depth router and predictor); and the dense attention's and FFN's.
  double attention_flops() const { return attn_flops_; }
  double ffn_flops() const { return ffn_flops_; }
  double router_flops() const { return router_flops_; }
  double dense_attention_flops() const { return dense_attn_flops_; }
  double dense_ffn_flops() const { return dense_flops_ - dense_attn_flops_; }

 private:
  Tensor run_forward(const Tensor& x, int64_t B, int64_t T);  // the block's forward, saving for backward
  Tensor inner_forward(const Tensor& x, int64_t B, int64_t T, const Tensor& positions = Tensor());
  Tensor inner_backward(const Tensor& dy);
  Tensor inner_decode(const Tensor& x, int64_t pos, Tensor& k, Tensor& v, std::vector<int64_t>& counts, int64_t& rows,
                      DecodeState& attn);
  void release();  // every part's saved activations dropped

  Ctx* ctx_;
  bool rope_;
  std::unique_ptr<Norm> ln1_, ln2_;
  std::unique_ptr<SelfAttention> attn_;
  std::unique_ptr<FeedForward> ffn_;
  std::unique_ptr<DepthRouter> depth_;
  bool training_ = true;
  bool recompute_ = false;
  bool moe_ = false;
  int ranks_ = 1;
  Tensor input_;  // recomputation: the training forward's x, until backward
  int64_t B_ = 0, T_ = 0;
  double dense_ffn_flops_ = 0;  // the dense FFN's forward FLOPs per token
  double flops_ = 0, dense_flops_ = 0;
  double attn_flops_ = 0, ffn_flops_ = 0, router_flops_ = 0, dense_attn_flops_ = 0;
};

// The FLOPs of a model's last forward by part, spent and dense (what the same
// model spends dense: see Block::dense_flops()); head = the LM head's matmul.
struct ComputeParts {
  double head = 0, attention = 0, ffn = 0, routers = 0;
  double dense_attention = 0, dense_ffn = 0;
  double spent() const { return head + attention + ffn + routers; }
  double dense() const { return head + dense_attention + dense_ffn; }
};

// A routed-attention centroid set (a checkpoint's routing state).
struct CentroidSetRef {
  std::string prefix;  // "h<l>.attn.centroids.<r>", or "attn.shared_centroids.<r>" (share_centroids)
  ops::Centroids* centroids;
};

// What decoding keeps (runtime/generate.h), per block: attention's keys and
// values, (seq_len, its kv_width()) f32 on the host, row i the i-th token
// the block ran on (position i's, but where a depth-routed block skipped
// tokens); and a MoE layer's assignments per expert at the positions so far
// (the FFN's counts, FeedForward::decode; empty for a dense FFN).
struct KvCache {
  std::vector<Tensor> k, v;
  std::vector<std::vector<int64_t>> counts;
  std::vector<int64_t> rows;  // the tokens each block's attention holds (fewer than the positions where depth-routed)
  std::vector<DecodeState> attn;  // each block's attention's own (SelfAttention::decode's state)
};

class Transformer {
 public:
  // ctx: where it runs; par: the process layout when running on several
  // ranks (null: one rank).
  // inference_only: no gradients or AdamW moments (ParamStore::
  // set_inference_only), for a model that is only evaluated; backward refuses.
  Transformer(Ctx& ctx, const Config& cfg, ParallelContext* par = nullptr, bool inference_only = false);
  // Mean next-byte cross-entropy of the batch (nats/byte); saves activations.
  // Router losses are not included (see aux_loss()) but their gradients are
  // part of backward().
  float forward(const Batch& batch);
  // Sum of the MoE and depth routers' losses in the last forward.
  double aux_loss() const;
  // The MoE layers, in depth order, with the index of their block.
  const std::vector<std::pair<int, MoeLayer*>>& moe_layers() const { return moe_; }
  // ready(offset), when given, hears as soon as the dense gradients at arena
  // offsets >= offset are final (block by block, from the last).
  void backward(const std::function<void(int64_t)>& ready = {});
  void set_training(bool training);
  // The training step whose random draws (router noise) the next forward uses.
  void set_step(int64_t step);
  // The next forward is micro-batch m of n of this rank's slice of the step's
  // batch (train.micro_batches; 0 of 1 otherwise): keys the routers' draws.
  void set_micro_batch(int m, int n);
  // Routed attention: initialise centroids on a warm-up batch that no loss
  // sees (an evaluation-mode forward), and apply their EMA update after a
  // training step. end_step() follows backward().
  bool needs_calibration() const;
  void calibrate(const Batch& warmup);
  void end_step();
  ParamStore& params() { return params_; }
  Ctx& ctx() { return ctx_; }
  // Routing state that changes in training without being a parameter, which a
  // checkpoint carries: centroid sets, and each MoE layer's balancing bias
  // ("h<l>.moe.router.balance_bias", (G): the model's own tensor, a view).
  std::vector<CentroidSetRef> centroid_sets();
  std::vector<std::pair<std::string, Tensor>> balance_biases();
  // The last forward's next-byte logits, (N, V) (their softmax: ops::router_scores).
  const Tensor& logits() const { return logits_; }
  // Autoregressive decoding (runtime/generate.h): a cache of seq_len
  // positions, and one token at position pos through the model with it (the
  // tokens at 0 .. pos-1 decoded through the same cache, in order; position 0
  // starts a window); returns its next-token logits (1, V). Evaluation mode
  // on the CPU, fp32 attention dense or routed (kv_cacheable() in
  // runtime/generate.h).
  // The MoE layers and depth routers route the one token (their routes:
  // item 0).
  KvCache new_cache() const;
  Tensor decode(int32_t token, int64_t pos, KvCache& cache);
  // The forward of `batch` with every part's output checked: -1 when all are
  // finite, else the first that is not: 0 the embedding, 1 + l block l,
  // n_layers + 1 the head (ln_f, head, loss). part_name(): "embedding",
  // "block h<l>", "head".
  int first_nonfinite_part(const Batch& batch);
  std::string part_name(int part) const;
  std::vector<Block>& blocks() { return blocks_; }
  // FLOPs of the last forward (multiply-add = 2), including the LM head, and
  // what the same model would have spent without depth routing.
  double forward_flops() const;
  double dense_forward_flops() const;
  ComputeParts compute_parts() const;
  // The cost unit: the dense FFN's forward FLOPs per token, 4 d_model
  // ffn_hidden, 6 with SwiGLU (the unit of c_g and of the MoE budget;
  // ffn_flops_per_token, runtime/cost_model.h).
  double cost_unit() const;
  double budget_target() const { return cfg_.budget().target(); }
  // The moe.budget every MoE layer was built with (derived from
  // budget.target when set, else moe.budget).
  double moe_budget() const { return moe_budget_; }

 private:
  Ctx& ctx_;
  Config cfg_;
  int64_t C_, V_, T_;
  ParamStore params_;
  Param *wte_, *wpe_ = nullptr;  // wpe: learned positions only
  std::vector<Block> blocks_;
  std::vector<std::pair<int, MoeLayer*>> moe_;
  std::vector<ops::Centroids> shared_centroids_;  // attention.share_centroids
  std::vector<int64_t> block_offset_;  // dense arena offset of each block's first parameter
  int64_t tail_offset_ = 0;            // ... of ln_f's (ln_f and head come last)
  std::unique_ptr<Norm> ln_f_;
  std::unique_ptr<Linear> head_;
  // saved
  Tensor inputs_, targets_;  // (B*T) i32
  int64_t B_ = 0;
  Tensor logits_, ce_stats_;  // ce_stats_: ops/cross_entropy.h's (N, 2)
  bool training_ = true;
  double moe_budget_ = 0;
  bool check_finite_ = false;
  int first_nonfinite_ = -1;
};

}  // namespace sy
