// The dense layers of a transformer block, each with an explicit forward that
// saves what its backward needs (as llm.c does; there is no general autograd).
// Shapes: token rows are (N, C) with N = B*T. backward(dy) returns dx and
// accumulates parameter gradients into Param::grad. Each layer runs its ops on
// the Ctx it was built with (the model's device, stream and allocator).
#pragma once
#include <string>

#include "ops/attention.h"
#include "runtime/params.h"

namespace sy {

class Linear {
 public:
  Linear(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t in, int64_t out, Rng& rng, float std,
         bool bias = true);
  Tensor forward(const Tensor& x);
  Tensor backward(const Tensor& dy);
  int64_t in() const { return w_->shape[0]; }
  int64_t out() const { return w_->shape[1]; }

 private:
  Ctx& ctx_;
  Param* w_;
  Param* b_ = nullptr;
  Tensor x_;
};

class LayerNorm {
 public:
  LayerNorm(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, Rng& rng);
  Tensor forward(const Tensor& x);
  Tensor backward(const Tensor& dy);

 private:
  Ctx& ctx_;
  Param *w_, *b_;
  Tensor x_, mean_, rstd_;
};

// What sits in a block's feed-forward position: a dense MLP or a MoE layer.
class FeedForward {
 public:
  virtual ~FeedForward() = default;
  virtual Tensor forward(const Tensor& x) = 0;  // x (N, C) -> (N, C)
  virtual Tensor backward(const Tensor& dy) = 0;
  virtual void set_training(bool) {}
  // The rows of the next forward are sequences of T tokens each (a causal
  // per-sequence budget needs it; the block calls it before forward).
  virtual void set_sequence_length(int64_t) {}
  // Multiply-adds x2 spent by the last forward, for FLOP accounting.
  virtual double forward_flops() const = 0;
  // The part of forward_flops() spent deciding where tokens go (a router).
  virtual double router_flops() const { return 0; }
};

// y = fc2(gelu(fc1(x)))
class Mlp : public FeedForward {
 public:
  Mlp(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t hidden, Rng& rng, float std,
      float out_std);
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  double forward_flops() const override { return flops_; }

 private:
  Ctx& ctx_;
  Linear fc1_, fc2_;
  Tensor pre_;
  double flops_ = 0;
};

// What sits in a block's attention position: dense causal attention, or a
// sparse one (runtime/sparse_self_attention.h).
class SelfAttention {
 public:
  virtual ~SelfAttention() = default;
  virtual Tensor forward(const Tensor& x, int64_t B, int64_t T) = 0;  // x (B*T, C)
  virtual Tensor backward(const Tensor& dy) = 0;
  virtual void set_training(bool) {}
  virtual double forward_flops() const = 0;
  // FLOPs a dense forward over B sequences of T tokens would spend.
  virtual double flops(int64_t B, int64_t T) const = 0;
  virtual double aux_loss() const { return 0; }
};

// y = proj(attention(qkv(x)))
class CausalSelfAttention : public SelfAttention {
 public:
  CausalSelfAttention(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t H, Rng& rng,
                      float std, float out_std);
  Tensor forward(const Tensor& x, int64_t B, int64_t T) override;
  Tensor backward(const Tensor& dy) override;
  double forward_flops() const override { return flops_; }
  double flops(int64_t B, int64_t T) const override;

 private:
  Ctx& ctx_;
  Linear qkv_, proj_;
  int64_t C_, H_;
  ops::AttentionShape shape_{};
  Tensor qkv_out_, y_, lse_;  // saved for backward: qkv, the attention output, its lse (B, H, T)
  double flops_ = 0;
};

}  // namespace sy
