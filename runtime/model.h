// A decoder-only, pre-LayerNorm transformer over bytes (GPT-2 layout):
//
//   h0 = wte[x] + wpe[t]
//   h' = h + Attn(LN1(h));   h'' = h' + FFN(LN2(h'))      per block
//   logits = LN_f(h_L) W_head;  loss = CE(logits, next byte)
//
// FFN is a dense MLP, or a MoE layer on the blocks the config routes.
// forward() saves every activation backward() needs; backward() accumulates
// into the ParamStore's gradients (call params().zero_grad() between steps).
#pragma once
#include <memory>
#include <vector>

#include "ops/embedding.h"
#include "runtime/config.h"
#include "runtime/data.h"
#include "runtime/layers.h"
#include "runtime/moe_layer.h"

namespace sy {

class Block {
 public:
  Block(ParamStore& ps, const std::string& name, const switchyard::ModelConfig& m,
        std::unique_ptr<FeedForward> ffn, Rng& rng);
  Tensor forward(const Tensor& x, int64_t B, int64_t T);
  Tensor backward(const Tensor& dy);
  FeedForward& ffn() { return *ffn_; }
  double forward_flops() const { return attn_.forward_flops() + ffn_->forward_flops(); }

 private:
  LayerNorm ln1_, ln2_;
  CausalSelfAttention attn_;
  std::unique_ptr<FeedForward> ffn_;
};

class Transformer {
 public:
  explicit Transformer(const Config& cfg);
  // Mean next-byte cross-entropy of the batch (nats/byte); saves activations.
  // Router losses are not included (see aux_loss()) but their gradients are
  // part of backward().
  float forward(const Batch& batch);
  // Sum of the MoE layers' router losses in the last forward.
  double aux_loss() const;
  // The MoE layers, in depth order, with the index of their block.
  const std::vector<std::pair<int, MoeLayer*>>& moe_layers() const { return moe_; }
  void backward();
  void set_training(bool training);
  ParamStore& params() { return params_; }
  std::vector<Block>& blocks() { return blocks_; }
  // FLOPs of the last forward (multiply-add = 2), including the LM head.
  double forward_flops() const;
  int64_t seq_len() const { return T_; }

 private:
  Config cfg_;
  int64_t C_, V_, T_;
  ParamStore params_;
  Param *wte_, *wpe_;
  std::vector<Block> blocks_;
  std::vector<std::pair<int, MoeLayer*>> moe_;
  std::unique_ptr<LayerNorm> ln_f_;
  std::unique_ptr<Linear> head_;
  // saved
  ops::Tokens inputs_, targets_;
  int64_t B_ = 0;
  Tensor probs_;
  bool training_ = true;
};

}  // namespace sy
