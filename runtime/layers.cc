#include "runtime/layers.h"

#include <algorithm>

#include "ops/decode_attention.h"
#include "ops/elementwise.h"
#include "ops/heads.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace sy {

Linear::Linear(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t in, int64_t out, Rng& rng, float std,
               bool bias)
    : ctx_(ctx) {
  w_ = ps.add(name + ".w", {in, out}, rng, std, true);
  if (bias) b_ = ps.add(name + ".b", {out}, rng, 0.f, false);
}

Linear::Linear(Ctx& ctx, Param* shared) : ctx_(ctx), w_(shared), transposed_(true) {}

Tensor Linear::forward(const Tensor& x, DType y_dtype, Tensor* gelu) {
  SY_CHECK(y_dtype == DType::f32 || shadow(), "Linear: a bf16 output in bf16 mode only");
  Tensor y = Tensor::empty({x.dim(0), out()}, y_dtype, ctx_);
  if (gelu) *gelu = Tensor::empty(y.shape(), y_dtype, ctx_);
  // bf16 mode keeps x as the GEMM read it, bf16(x): what dW needs, in half the bytes.
  Tensor x16;
  ops::matmul_forward(ctx_, {y, x, w_->value, b_ ? b_->value : Tensor(), false, transposed_, shadow(),
                             shadow() ? &x16 : nullptr, gelu});
  x_ = shadow() ? x16 : x;
  return y;
}

Tensor Linear::backward(const Tensor& dy, DType dx_dtype, const Tensor* gelu_pre) {
  // dx written by the GEMM (no zero fill, no read back); f32 even where x_ is
  // bf16, unless the caller reads it as bf16
  SY_CHECK(dx_dtype == DType::f32 || shadow(), "Linear: a bf16 gradient in bf16 mode only");
  Tensor dx = Tensor::empty(x_.shape(), dx_dtype, ctx_);
  ops::matmul_backward(ctx_, {&dx, &w_->grad, b_ ? &b_->grad : nullptr, dy, x_, w_->value, transposed_, shadow(),
                              /*dx_accumulate=*/false, gelu_pre});
  return dx;
}

LayerNorm::LayerNorm(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, Rng& rng) : ctx_(ctx) {
  w_ = ps.add(name + ".w", {C}, rng, 0.f, false, 1.f);
  b_ = ps.add(name + ".b", {C}, rng, 0.f, false);
}

Tensor LayerNorm::forward(const Tensor& x, DType y_dtype) {
  x_ = x;
  mean_ = Tensor::empty({x.dim(0)}, DType::f32, ctx_);
  rstd_ = Tensor::empty({x.dim(0)}, DType::f32, ctx_);
  Tensor y = Tensor::empty(x.shape(), y_dtype, ctx_);
  ops::layernorm_forward(ctx_, {y, mean_, rstd_, x, w_->value, b_->value});
  return y;
}

Tensor LayerNorm::backward(const Tensor& dy) {
  Tensor dx = Tensor::zeros(x_.shape(), DType::f32, ctx_);
  backward_into(dy, dx);
  return dx;
}

void LayerNorm::backward_into(const Tensor& dy, Tensor& dx) {
  SY_CHECK(dx.raw() != dy.raw(), "LayerNorm::backward_into: dx is dy's storage");
  ops::layernorm_backward(ctx_, {dx, &w_->grad, &b_->grad, dy, x_, w_->value, mean_, rstd_});
}

RmsNorm::RmsNorm(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, Rng& rng) : ctx_(ctx) {
  w_ = ps.add(name + ".w", {C}, rng, 0.f, false, 1.f);
}

Tensor RmsNorm::forward(const Tensor& x, DType y_dtype) {
  x_ = x;
  rstd_ = Tensor::empty({x.dim(0)}, DType::f32, ctx_);
  Tensor y = Tensor::empty(x.shape(), DType::f32, ctx_);
  ops::rmsnorm_forward(ctx_, {y, rstd_, x, w_->value});
  if (y_dtype == DType::f32) return y;
  Tensor y16 = Tensor::empty(x.shape(), y_dtype, ctx_);
  ops::to_bf16(ctx_, y16, y);
  return y16;
}

Tensor RmsNorm::backward(const Tensor& dy) {
  Tensor dx = Tensor::zeros(x_.shape(), DType::f32, ctx_);
  backward_into(dy, dx);
  return dx;
}

void RmsNorm::backward_into(const Tensor& dy, Tensor& dx) {
  SY_CHECK(dx.raw() != dy.raw(), "RmsNorm::backward_into: dx is dy's storage");
  ops::rmsnorm_backward(ctx_, {dx, w_->grad, dy, x_, w_->value, rstd_});
}

std::unique_ptr<Norm> make_norm(NormKind kind, Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C,
                                Rng& rng) {
  if (kind == NormKind::rmsnorm) return std::make_unique<RmsNorm>(ctx, ps, name, C, rng);
  return std::make_unique<LayerNorm>(ctx, ps, name, C, rng);
}

namespace {
int64_t pre_width(const FfnOptions& o, int64_t hidden) {
  return o.act == ops::FfnActivation::swiglu ? 2 * hidden : hidden;
}
}  // namespace

Mlp::Mlp(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t hidden, Rng& rng, float std,
         float out_std, const FfnOptions& options)
    : ctx_(ctx),
      act_(options.act),
      fc1_(ctx, ps, name + ".fc1", C, pre_width(options, hidden), rng, std, options.bias),
      fc2_(ctx, ps, name + ".fc2", hidden, C, rng, out_std, options.bias) {}

// bf16 mode with GELU: the pre-activation and its gradient are bf16 too (the
// GEMMs write them rounded, with the epilogue's act), as PyTorch autocast
// keeps them: half the bytes of the layer's widest tensors. SwiGLU keeps
// them fp32 (its kernels read fp32 only).
bool Mlp::bf16_pre() const { return fc1_.reads_bf16() && fc2_.reads_bf16() && act_ == ops::FfnActivation::gelu; }

Tensor Mlp::forward(const Tensor& x) {
  flops_ = 2.0 * x.dim(0) * (fc1_.in() * fc1_.out() + fc2_.in() * fc2_.out());
  Tensor act;
  if (act_ == ops::FfnActivation::gelu) {
    // fc1's GELU epilogue (ops/matmul.h): the GEMM writes pre and act, in
    // pre's dtype (on CUDA no activation pass over the layer's widest
    // tensors, in bf16 where cuBLASLt has the epilogue); fc2 reads act as
    // it is (bf16 mode rounds an f32 one).
    pre_ = fc1_.forward(x, bf16_pre() ? DType::bf16 : DType::f32, &act);
    return fc2_.forward(act);
  }
  pre_ = fc1_.forward(x);
  // SwiGLU writes fc2's input rounded, where fc2 reads it so (bf16 mode);
  // the backward reads pre_, not the activation.
  act = Tensor::empty({x.dim(0), fc2_.in()}, fc2_.reads_bf16() ? DType::bf16 : DType::f32, ctx_);
  ops::swiglu_forward(ctx_, {act, pre_});
  return fc2_.forward(act);
}

Tensor Mlp::backward(const Tensor& dy) {
  // GELU: fc2's backward with the epilogue's derivative writes dpre itself, in pre's dtype.
  if (act_ == ops::FfnActivation::gelu) return fc1_.backward(fc2_.backward(dy, pre_.dtype(), &pre_));
  Tensor dact = fc2_.backward(dy);
  // A bf16 fc1 reads dpre rounded: SwiGLU's backward writes it so (no zero
  // fill, no f32 copy to round); an f32 dpre accumulates from zero.
  Tensor dpre = fc1_.reads_bf16() ? Tensor::empty(pre_.shape(), DType::bf16, ctx_)
                                  : Tensor::zeros(pre_.shape(), DType::f32, ctx_);
  ops::swiglu_backward(ctx_, {dpre, dact, pre_});
  return fc1_.backward(dpre);
}

void Mlp::release() {
  fc1_.release();
  fc2_.release();
  pre_ = Tensor();
}

CausalSelfAttention::CausalSelfAttention(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t H,
                                         Rng& rng, float std, float out_std, const AttentionOptions& options)
    : ctx_(ctx),
      qkv_(ctx, ps, name + ".qkv", C, C + 2 * options.kv_heads_for(H) * (C / H), rng, std, options.bias),
      proj_(ctx, ps, name + ".proj", C, C, rng, out_std, options.bias),
      C_(C), H_(H), G_(options.kv_heads_for(H)), opt_(options) {}

Tensor CausalSelfAttention::expand(const Tensor& g, int64_t B, int64_t T) {
  if (!grouped()) return g.reshape({B, T, 3 * C_});
  Tensor wide = Tensor::empty({B * T, 3 * C_}, g.dtype(), ctx_);
  ops::expand_kv_heads(ctx_, wide, g, {H_, G_, C_ / H_});
  return wide.reshape({B, T, 3 * C_});
}

Tensor CausalSelfAttention::reduce(const Tensor& wide) {
  const Tensor w = wide.reshape({wide.numel() / (3 * C_), 3 * C_});
  if (!grouped()) return w;
  Tensor g = Tensor::empty({w.dim(0), qkv_width()}, w.dtype(), ctx_);
  ops::reduce_kv_heads(ctx_, g, w, {H_, G_, C_ / H_});
  return g;
}

Tensor CausalSelfAttention::forward(const Tensor& x, int64_t B, int64_t T, const Tensor& positions) {
  shape_ = {B, T, C_, H_};
  positions_ = positions;
  lse_ = Tensor::empty({B, H_, T}, DType::f32, ctx_);
  flops_ = flops(B, T);
  // bf16 attention after a bf16 qkv GEMM, without RoPE to apply in between:
  // the GEMM writes the bf16 qkv the kernels read (no f32 qkv, no rounding
  // pass: the f32 values rounded, on CUDA to within one bf16 step, ops/matmul.h).
  const bool qkv_writes_bf16 = opt_.bf16 && !opt_.rope && qkv_.reads_bf16();
  if (qkv_writes_bf16) {
    qkv16_ = expand(qkv_.forward(x, DType::bf16), B, T);
    qkv_out_ = Tensor();
  } else {
    Tensor qkv = qkv_.forward(x);  // (B*T, qkv_width)
    // q and k: heads [0, H + G) of the packed row; v is left alone.
    if (opt_.rope) ops::rope_forward(ctx_, {qkv, positions_, T, H_ + G_, C_ / H_, opt_.rope_base});
    qkv_out_ = expand(qkv, B, T);
  }
  if (opt_.bf16) {
    y16_ = Tensor::empty({B, T, C_}, DType::bf16, ctx_);
    if (!qkv_writes_bf16) {
      qkv16_ = Tensor::empty({B, T, 3 * C_}, DType::bf16, ctx_);
      ops::to_bf16(ctx_, qkv16_, qkv_out_);
    }
    ops::attention_forward(ctx_, {y16_, lse_, qkv16_, shape_});
    // A bf16 proj reads the bf16 output as it is (the values it would round
    // the widened ones back to); otherwise it gets them widened.
    if (proj_.reads_bf16()) return proj_.forward(y16_.reshape({B * T, C_}));
    y_ = Tensor::empty({B, T, C_}, DType::f32, ctx_);
    ops::to_f32(ctx_, y_, y16_);
  } else {
    y_ = Tensor::empty({B, T, C_}, DType::f32, ctx_);
    ops::attention_forward(ctx_, {y_, lse_, qkv_out_, shape_});
  }
  return proj_.forward(y_.reshape({B * T, C_}));
}

Tensor SelfAttention::decode(const Tensor&, int64_t, int64_t, Tensor&, Tensor&, DecodeState&) {
  throw ConfigError(
      "decoding with a key/value cache takes dense causal attention, a routed layer's causal heads or block "
      "top-k (runtime/generate.h kv_cacheable)");
}

Tensor decode_projection(Ctx& ctx, Linear& qkv, const Tensor& x, int64_t pos, int64_t row, Tensor& k, Tensor& v,
                         int64_t C, int64_t H, int64_t G, const AttentionOptions& opt) {
  SY_CHECK(ctx.device.is_cpu() && !opt.bf16 && !qkv.reads_bf16() && x.dim(0) == 1, "decode: one fp32 row on the CPU");
  const int64_t D = C / H, W = G * D;
  SY_CHECK(pos >= row && row >= 0 && k.dim(0) > row && v.dim(0) > row && k.dim(1) == W && v.dim(1) == W,
           "decode at position " << pos << " into row " << row << " of a cache of " << shape_str(k.shape()));
  Tensor y = qkv.forward(x);
  if (opt.rope) {  // q and k rotated to the token's position, as in forward
    const Tensor at = Tensor::from_host(std::vector<int32_t>{static_cast<int32_t>(pos)});
    ops::rope_forward(ctx, {y, at, pos + 1, H + G, D, opt.rope_base});
  }
  const float* r = y.f32();
  std::copy(r + C, r + C + W, k.f32() + row * W);
  std::copy(r + C + W, r + C + 2 * W, v.f32() + row * W);
  return y;
}

Tensor CausalSelfAttention::decode(const Tensor& x, int64_t pos, int64_t row, Tensor& k, Tensor& v,
                                   DecodeState&) {
  const Tensor qkv = decode_projection(ctx_, qkv_, x, pos, row, k, v, C_, H_, G_, opt_);
  Tensor q = Tensor::empty({C_}, DType::f32, ctx_), y = Tensor::empty({C_}, DType::f32, ctx_);
  std::copy(qkv.f32(), qkv.f32() + C_, q.f32());
  ops::decode_attention(ctx_, {y, q, k, v, row + 1, H_, G_});
  return proj_.forward(y.reshape({1, C_}));
}

void CausalSelfAttention::release() {
  qkv_.release();
  proj_.release();
  qkv_out_ = y_ = lse_ = positions_ = qkv16_ = y16_ = Tensor();
}

double CausalSelfAttention::flops(int64_t B, int64_t T) const {
  // Projections 2*N*C*(qkv_width + C) (4C^2 without grouping); scores and
  // weighted sum 2 * 2*B*H*(T*T/2)*D (causal half).
  return 2.0 * B * T * (C_ * static_cast<double>(qkv_width() + C_)) + 2.0 * B * T * T * C_;
}

Tensor CausalSelfAttention::backward(const Tensor& dy) {
  const Shape qkv_shape{shape_.B, shape_.T, 3 * C_};
  Tensor dqkv;
  if (opt_.bf16) {
    // The attention kernels read dout in bf16: a bf16 proj writes it so
    // (what the rounding pass would give; on CUDA within one bf16 step).
    Tensor dout16;
    if (proj_.reads_bf16()) {
      dout16 = proj_.backward(dy, DType::bf16).reshape({shape_.B, shape_.T, C_});
    } else {
      const Tensor dyatt = proj_.backward(dy);
      dout16 = Tensor::empty({shape_.B, shape_.T, C_}, DType::bf16, ctx_);
      ops::to_bf16(ctx_, dout16, dyatt.reshape({shape_.B, shape_.T, C_}));
    }
    Tensor dqkv16 = Tensor::zeros(qkv_shape, DType::bf16, ctx_);
    ops::attention_backward(ctx_, {dqkv16, dout16, qkv16_, y16_, lse_, shape_});
    // Without RoPE to undo, a bf16 qkv GEMM takes the bf16 gradient as it is
    // (its bias gradient sums the same values widened).
    if (!opt_.rope && qkv_.reads_bf16()) return qkv_.backward(reduce(dqkv16));
    dqkv = Tensor::empty(qkv_shape, DType::f32, ctx_);
    ops::to_f32(ctx_, dqkv, dqkv16);
  } else {
    const Tensor dyatt = proj_.backward(dy);
    dqkv = Tensor::zeros(qkv_shape, DType::f32, ctx_);
    ops::attention_backward(ctx_, {dqkv, dyatt.reshape({shape_.B, shape_.T, C_}), qkv_out_, y_, lse_, shape_});
  }
  Tensor d = reduce(dqkv);
  if (opt_.rope) ops::rope_backward(ctx_, {d, positions_, shape_.T, H_ + G_, C_ / H_, opt_.rope_base});
  return qkv_.backward(d);
}

}  // namespace sy
