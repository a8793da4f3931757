#include "runtime/layers.h"

#include "ops/gelu.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"

namespace sy {

Linear::Linear(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t in, int64_t out, Rng& rng, float std,
               bool bias)
    : ctx_(ctx) {
  w_ = ps.add(name + ".w", {in, out}, rng, std, true);
  if (bias) b_ = ps.add(name + ".b", {out}, rng, 0.f, false);
}

Tensor Linear::forward(const Tensor& x) {
  x_ = x;
  Tensor y = Tensor::empty({x.dim(0), out()}, DType::f32, ctx_);
  ops::matmul_forward(ctx_, {y, x, w_->value, b_ ? b_->value : Tensor()});
  return y;
}

Tensor Linear::backward(const Tensor& dy) {
  Tensor dx = Tensor::zeros(x_.shape(), DType::f32, ctx_);
  ops::matmul_backward(ctx_, {&dx, &w_->grad, b_ ? &b_->grad : nullptr, dy, x_, w_->value});
  return dx;
}

LayerNorm::LayerNorm(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, Rng& rng) : ctx_(ctx) {
  w_ = ps.add(name + ".w", {C}, rng, 0.f, false, 1.f);
  b_ = ps.add(name + ".b", {C}, rng, 0.f, false);
}

Tensor LayerNorm::forward(const Tensor& x) {
  x_ = x;
  mean_ = Tensor::empty({x.dim(0)}, DType::f32, ctx_);
  rstd_ = Tensor::empty({x.dim(0)}, DType::f32, ctx_);
  Tensor y = Tensor::empty(x.shape(), DType::f32, ctx_);
  ops::layernorm_forward(ctx_, {y, mean_, rstd_, x, w_->value, b_->value});
  return y;
}

Tensor LayerNorm::backward(const Tensor& dy) {
  Tensor dx = Tensor::zeros(x_.shape(), DType::f32, ctx_);
  ops::layernorm_backward(ctx_, {dx, &w_->grad, &b_->grad, dy, x_, w_->value, mean_, rstd_});
  return dx;
}

Mlp::Mlp(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t hidden, Rng& rng, float std,
         float out_std)
    : ctx_(ctx), fc1_(ctx, ps, name + ".fc1", C, hidden, rng, std), fc2_(ctx, ps, name + ".fc2", hidden, C, rng, out_std) {}

Tensor Mlp::forward(const Tensor& x) {
  pre_ = fc1_.forward(x);
  Tensor act = Tensor::empty(pre_.shape(), DType::f32, ctx_);
  ops::gelu_forward(ctx_, act, pre_);
  flops_ = 2.0 * x.dim(0) * (fc1_.in() * fc1_.out() + fc2_.in() * fc2_.out());
  return fc2_.forward(act);
}

Tensor Mlp::backward(const Tensor& dy) {
  Tensor dact = fc2_.backward(dy);
  Tensor dpre = Tensor::zeros(pre_.shape(), DType::f32, ctx_);
  ops::gelu_backward(ctx_, dpre, dact, pre_);
  return fc1_.backward(dpre);
}

CausalSelfAttention::CausalSelfAttention(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t H,
                                         Rng& rng, float std, float out_std)
    : ctx_(ctx), qkv_(ctx, ps, name + ".qkv", C, 3 * C, rng, std), proj_(ctx, ps, name + ".proj", C, C, rng, out_std),
      C_(C), H_(H) {}

Tensor CausalSelfAttention::forward(const Tensor& x, int64_t B, int64_t T) {
  shape_ = {B, T, C_, H_};
  qkv_out_ = qkv_.forward(x).reshape({B, T, 3 * C_});
  lse_ = Tensor::empty({B, H_, T}, DType::f32, ctx_);
  y_ = Tensor::empty({B, T, C_}, DType::f32, ctx_);
  ops::attention_forward(ctx_, {y_, lse_, qkv_out_, shape_});
  flops_ = flops(B, T);
  return proj_.forward(y_.reshape({B * T, C_}));
}

double CausalSelfAttention::flops(int64_t B, int64_t T) const {
  // Projections 2*N*C*4C; scores and weighted sum 2 * 2*B*H*(T*T/2)*D (causal half).
  return 2.0 * B * T * (4.0 * C_ * C_) + 2.0 * B * T * T * C_;
}

Tensor CausalSelfAttention::backward(const Tensor& dy) {
  Tensor dyatt = proj_.backward(dy);
  Tensor dqkv = Tensor::zeros(qkv_out_.shape(), DType::f32, ctx_);
  ops::attention_backward(ctx_, {dqkv, dyatt.reshape({shape_.B, shape_.T, C_}), qkv_out_, y_, lse_, shape_});
  return qkv_.backward(dqkv.reshape({shape_.B * shape_.T, 3 * C_}));
}

}  // namespace sy
