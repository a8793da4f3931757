// The dense layers of a transformer block, each with an explicit forward that
// saves what its backward needs (as llm.c does; there is no general autograd).
// Shapes: token rows are (N, C) with N = B*T. backward(dy) returns dx and
// accumulates parameter gradients into Param::grad. Each layer runs its ops on
// the Ctx it was built with (the model's device, stream and allocator).
// release() drops what forward saved for backward (activation recomputation,
// train.recompute: the block runs forward again before its backward); a
// backward then needs a forward first.
#pragma once
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/expert_ffn.h"
#include "runtime/params.h"

namespace sy {

// y = x W + b, W (in, out). With a shared weight (tied embeddings) the layer
// owns no parameter: y = x W^T through another layer's W (out, in), no bias,
// and its gradient accumulates into that parameter's.
class Linear {
 public:
  Linear(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t in, int64_t out, Rng& rng, float std,
         bool bias = true);
  // y = x shared^T, shared (out, in): the LM head tied to the token embedding.
  Linear(Ctx& ctx, Param* shared);
  // y (and backward's dx) f32, or bf16 where the next op reads it so: written
  // rounded by the GEMM (bf16 mode only; ops/matmul.h).
  // gelu (out): also gelu(y), y's shape and dtype, from the GEMM's fp32
  // value (matmul's GELU epilogue). gelu_pre: dx = gelu'(gelu_pre) * dy W^T
  // instead (the epilogue's backward; gelu_pre is that forward's y, dx in
  // its dtype).
  Tensor forward(const Tensor& x, DType y_dtype = DType::f32, Tensor* gelu = nullptr);
  Tensor backward(const Tensor& dy, DType dx_dtype = DType::f32, const Tensor* gelu_pre = nullptr);
  int64_t in() const { return w_->shape[transposed_ ? 1 : 0]; }
  int64_t out() const { return w_->shape[transposed_ ? 0 : 1]; }
  // Whether its GEMMs read bf16(x) (bf16 mode): forward then takes x as bf16,
  // rounded by whatever wrote it, instead of rounding it in a pass of its own.
  bool reads_bf16() const { return shadow() != nullptr; }
  void release() { x_ = Tensor(); }

 private:
  // W's bf16 shadow when the store keeps them (Config.precision BF16): the
  // GEMMs run in matmul's bf16 mode.
  const Tensor* shadow() const { return w_->value_bf16.defined() ? &w_->value_bf16 : nullptr; }
  Ctx& ctx_;
  Param* w_;
  Param* b_ = nullptr;
  bool transposed_ = false;
  Tensor x_;  // saved for backward: x, or bf16(x) in bf16 mode
};

// A block's normalisation (model.norm): LayerNorm (w, b) or RMSNorm (w only).
// forward's y is f32, or bf16 where a bf16 GEMM reads it next (Linear::reads_bf16).
class Norm {
 public:
  virtual ~Norm() = default;
  Tensor forward(const Tensor& x) { return forward(x, DType::f32); }
  virtual Tensor forward(const Tensor& x, DType y_dtype) = 0;  // (N, C) -> (N, C)
  virtual Tensor backward(const Tensor& dy) = 0;
  // dx += the gradient (the ops accumulate): a residual connection's
  // gradient sums into the buffer already holding its other term, with no
  // zeroed buffer and no separate add. dx may not be dy's storage.
  virtual void backward_into(const Tensor& dy, Tensor& dx) = 0;
  virtual void release() = 0;
};

enum class NormKind { layernorm, rmsnorm };

// ops/layernorm.h; parameters <name>.w (ones), <name>.b (zeros).
class LayerNorm : public Norm {
 public:
  LayerNorm(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, Rng& rng);
  using Norm::forward;
  Tensor forward(const Tensor& x, DType y_dtype) override;  // (bf16: rounded as the kernel writes it)
  Tensor backward(const Tensor& dy) override;
  void backward_into(const Tensor& dy, Tensor& dx) override;
  void release() override { x_ = mean_ = rstd_ = Tensor(); }

 private:
  Ctx& ctx_;
  Param *w_, *b_;
  Tensor x_, mean_, rstd_;
};

// ops/rmsnorm.h; parameter <name>.w (ones), no bias.
class RmsNorm : public Norm {
 public:
  RmsNorm(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, Rng& rng);
  using Norm::forward;
  Tensor forward(const Tensor& x, DType y_dtype) override;  // (bf16: rounded after, in a pass of its own)
  Tensor backward(const Tensor& dy) override;
  void backward_into(const Tensor& dy, Tensor& dx) override;
  void release() override { x_ = rstd_ = Tensor(); }

 private:
  Ctx& ctx_;
  Param* w_;
  Tensor x_, rstd_;
};

std::unique_ptr<Norm> make_norm(NormKind kind, Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C,
                                Rng& rng);

// The FFN's shape options (model.activation, model.bias), for dense MLPs and
// expert FFNs alike.
struct FfnOptions {
  ops::FfnActivation act = ops::FfnActivation::gelu;
  bool bias = true;
};

// The attention's options: model.bias for its projections, and rotary
// positions on q and k (model.position ROPE, ops/rope.h).
struct AttentionOptions {
  bool bias = true;
  bool rope = false;
  double rope_base = 10000.0;
  // Attention on bf16 q, k, v (Config.precision BF16 where the head dim has
  // tensor-core kernels, bf16_attention() in runtime/model.h): qkv is rounded
  // to bf16 on its way in, the output and dqkv come back as bf16 values;
  // softmax and LSE stay fp32. Dense attention, and in a routed layer the
  // local heads and causal routing heads (SparseSelfAttention).
  bool bf16 = false;
  // Key and value heads (grouped-query attention: each shared by
  // n_heads / kv_heads query heads, ops/heads.h); 0 = one per query head.
  int64_t kv_heads = 0;
  // kv_heads as resolved for H query heads.
  int64_t kv_heads_for(int64_t H) const { return kv_heads > 0 ? kv_heads : H; }
};

// What sits in a block's feed-forward position: a dense MLP or a MoE layer.
class FeedForward {
 public:
  virtual ~FeedForward() = default;
  virtual Tensor forward(const Tensor& x) = 0;  // x (N, C) -> (N, C)
  virtual Tensor backward(const Tensor& dy) = 0;
  virtual void release() = 0;
  // The next forwards repeat one already run (activation recomputation):
  // their counters add to the first's where they count work done.
  virtual void set_replay(bool) {}
  virtual void set_training(bool) {}
  // The rows of the next forward are sequences of T tokens each (a causal
  // per-sequence budget needs it; the block calls it before forward).
  virtual void set_sequence_length(int64_t) {}
  // The token ids (N) i32 of the next forwards' rows, on the device (hash
  // routing names experts by them; the model sets them before its blocks).
  virtual void set_token_ids(const Tensor&) {}
  // The next forwards are the parts of one (a depth-routed MoE block's
  // sequences at evaluation, runtime/model.cc): the statistics after them
  // are over all of their rows, as one forward's would be, until pooling is
  // set false (a MoE layer's routing statistics; a dense FFN has none).
  virtual void pool_statistics(bool) {}
  // The next forward's rows are padding, run only so that every rank makes
  // the same calls into the layer's collectives: they count in no statistic.
  virtual void set_padding(bool) {}
  // One token of autoregressive decoding (Transformer::decode): x (1, C) at
  // the next position of a window of `window` positions, computed as a
  // forward over the window computes that token's row. counts: the layer's
  // state in the cache (a MoE layer's assignments per expert at the window's
  // positions so far, zeroed at position 0), which a MoE layer reads to drop
  // what the window's capacity would (Router::set_decode).
  virtual Tensor decode(const Tensor& x, int64_t /*window*/, std::vector<int64_t>& /*counts*/) { return forward(x); }
  // Multiply-adds x2 spent by the last forward, for FLOP accounting.
  virtual double forward_flops() const = 0;
  // The part of forward_flops() spent deciding where tokens go (a router).
  virtual double router_flops() const { return 0; }
  // Whether forward takes x as bf16 (its first GEMMs read bf16(x) and
  // nothing else reads x): the norm before it then writes bf16.
  virtual bool reads_bf16() const { return false; }
};

// GELU:   y = fc2(gelu(fc1(x)))                  fc1 (C, H)
// SWIGLU: y = fc2(silu(g) * u), [g | u] = fc1(x)   fc1 (C, 2H): gate | up
// fc2 (H, C); biases unless options.bias is false. bf16 mode: the GEMMs'
// operands bf16 (ops/matmul.h); with GELU also fc1's output and fc2's input
// gradient (the pre-activation and its gradient, rounded as the GEMMs write
// them). GELU is fc1's GELU epilogue (ops/matmul.h): gelu of the GEMM's
// fp32 value, and in backward gelu' times fc2's fp32 input gradient, each
// rounded once.
class Mlp : public FeedForward {
 public:
  Mlp(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t hidden, Rng& rng, float std,
      float out_std, const FfnOptions& options = {});
  Tensor forward(const Tensor& x) override;
  Tensor backward(const Tensor& dy) override;
  void release() override;
  double forward_flops() const override { return flops_; }
  bool reads_bf16() const override { return fc1_.reads_bf16(); }

 private:
  Ctx& ctx_;
  ops::FfnActivation act_;
  Linear fc1_, fc2_;
  Tensor pre_;  // fc1's output: f32, or bf16 (bf16_pre)
  double flops_ = 0;
  bool bf16_pre() const;
};

// What an attention layer's decoding keeps besides the cached keys and
// values (SelfAttention::decode), zeroed at a window's start: counts (a
// routed layer's clusters) and values (block top-k's key means).
struct DecodeState {
  std::vector<int64_t> counts;
  std::vector<float> values;
  void zero() {
    std::fill(counts.begin(), counts.end(), 0);
    std::fill(values.begin(), values.end(), 0.f);
  }
};

// What sits in a block's attention position: dense causal attention, or a
// sparse one (runtime/sparse_self_attention.h).
class SelfAttention {
 public:
  virtual ~SelfAttention() = default;
  // x (B*T, C). positions: i32 (B*T), each row's position in its sequence,
  // which rotary embeddings use (a depth-routed block's sub-sequences keep
  // their tokens' original positions); undefined: row n is at n mod T.
  virtual Tensor forward(const Tensor& x, int64_t B, int64_t T, const Tensor& positions) = 0;
  Tensor forward(const Tensor& x, int64_t B, int64_t T) { return forward(x, B, T, Tensor()); }
  virtual Tensor backward(const Tensor& dy) = 0;
  virtual void release() = 0;
  // The next forwards repeat one already run (activation recomputation):
  // they record no training statistics a second time.
  virtual void set_replay(bool) {}
  virtual void set_training(bool) {}
  virtual double forward_flops() const = 0;
  // FLOPs a dense forward over B sequences of T tokens would spend.
  virtual double flops(int64_t B, int64_t T) const = 0;
  virtual double aux_loss() const { return 0; }
  // Whether forward takes x as bf16 (only its qkv GEMM reads x, in bf16 mode).
  virtual bool reads_bf16() const { return false; }
  // Autoregressive decoding with a key/value cache (runtime/generate.h): x
  // (1, C) is the token at position pos (RoPE's), the row-th token this
  // attention sees (pos, or in a depth-routed block its count of the tokens
  // kept before it); its key and value heads are written to row `row` of k
  // and v ((rows > row, kv_width()) each, on the host), and it attends over
  // rows 0 .. row. state: decode_state(rows of k), its own (zeroed at a
  // window's start). Dense causal attention, a routed layer's local and
  // causal routing heads and block top-k's heads (SparseSelfAttention) in
  // fp32 on the CPU; the others refuse (kv_width() 0).
  virtual Tensor decode(const Tensor& x, int64_t pos, int64_t row, Tensor& k, Tensor& v, DecodeState& state);
  virtual int64_t kv_width() const { return 0; }
  virtual DecodeState decode_state(int64_t /*rows*/) const { return {}; }
};

// Decoding's first step, shared by the layers that decode: the token's
// projection row (1, C + 2 G D) = [q (H heads) | k (G) | v (G)] of x (1, C)
// (fp32, on the CPU), q and k rotated to position pos where opt.rope, its key
// and value heads written to row `row` of the cache k, v (G D values each).
Tensor decode_projection(Ctx& ctx, Linear& qkv, const Tensor& x, int64_t pos, int64_t row, Tensor& k, Tensor& v,
                         int64_t C, int64_t H, int64_t G, const AttentionOptions& opt);

// y = proj(attention(qkv(x))); with RoPE, q and k of every head are rotated
// (ops/rope.h) between qkv and attention. With grouped-query attention
// (options.kv_heads G < H) qkv projects to [q (H heads) | k (G) | v (G)],
// which expand_kv_heads widens to the packed rows of H heads each that the
// attention kernels read (ops/heads.h; after RoPE, which rotates H + G heads),
// and reduce_kv_heads turns their gradient back.
class CausalSelfAttention : public SelfAttention {
 public:
  CausalSelfAttention(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t H, Rng& rng,
                      float std, float out_std, const AttentionOptions& options = {});
  using SelfAttention::forward;
  Tensor forward(const Tensor& x, int64_t B, int64_t T, const Tensor& positions) override;
  Tensor backward(const Tensor& dy) override;
  void release() override;
  double forward_flops() const override { return flops_; }
  double flops(int64_t B, int64_t T) const override;
  bool reads_bf16() const override { return qkv_.reads_bf16(); }
  Tensor decode(const Tensor& x, int64_t pos, int64_t row, Tensor& k, Tensor& v, DecodeState& state) override;
  int64_t kv_width() const override { return G_ * (C_ / H_); }

 private:
  Ctx& ctx_;
  Linear qkv_, proj_;
  int64_t C_, H_, G_;  // G_: key/value heads
  bool grouped() const { return G_ != H_; }
  int64_t qkv_width() const { return C_ + 2 * G_ * (C_ / H_); }
  Tensor expand(const Tensor& grouped, int64_t B, int64_t T);    // (B*T, qkv_width) -> (B, T, 3C)
  Tensor reduce(const Tensor& wide);                             // (B, T, 3C) -> (B*T, qkv_width)
  AttentionOptions opt_;
  ops::AttentionShape shape_{};
  // saved for backward: qkv (after RoPE), the attention output, its lse
  // (B, H, T), the rotary positions
  Tensor qkv_out_, y_, lse_, positions_;
  Tensor qkv16_, y16_;  // bf16 mode: what the attention kernels read and wrote
  double flops_ = 0;
};

}  // namespace sy
