#include "runtime/layers.h"

#include "ops/gelu.h"
#include "ops/layernorm.h"
#include "ops/matmul.h"

namespace sy {

Linear::Linear(ParamStore& ps, const std::string& name, int64_t in, int64_t out, Rng& rng,
               float std, bool bias) {
  w_ = ps.add(name + ".w", {in, out}, rng, std, true);
  if (bias) b_ = ps.add(name + ".b", {out}, rng, 0.f, false);
}

Tensor Linear::forward(const Tensor& x) {
  x_ = x;
  Tensor y({x.dim(0), out()});
  ops::matmul_forward(y, x, w_->value, b_ ? b_->value : Tensor());
  return y;
}

Tensor Linear::backward(const Tensor& dy) {
  Tensor dx(x_.shape());
  ops::matmul_backward(&dx, &w_->grad, b_ ? &b_->grad : nullptr, dy, x_, w_->value);
  return dx;
}

LayerNorm::LayerNorm(ParamStore& ps, const std::string& name, int64_t C, Rng& rng) {
  w_ = ps.add(name + ".w", {C}, rng, 0.f, false, 1.f);
  b_ = ps.add(name + ".b", {C}, rng, 0.f, false);
}

Tensor LayerNorm::forward(const Tensor& x) {
  x_ = x;
  mean_ = Tensor({x.dim(0)});
  rstd_ = Tensor({x.dim(0)});
  Tensor y(x.shape());
  ops::layernorm_forward(y, mean_, rstd_, x, w_->value, b_->value);
  return y;
}

Tensor LayerNorm::backward(const Tensor& dy) {
  Tensor dx(x_.shape());
  ops::layernorm_backward(dx, &w_->grad, &b_->grad, dy, x_, w_->value, mean_, rstd_);
  return dx;
}

Mlp::Mlp(ParamStore& ps, const std::string& name, int64_t C, int64_t hidden, Rng& rng, float std,
         float out_std)
    : fc1_(ps, name + ".fc1", C, hidden, rng, std), fc2_(ps, name + ".fc2", hidden, C, rng, out_std) {}

Tensor Mlp::forward(const Tensor& x) {
  pre_ = fc1_.forward(x);
  Tensor act(pre_.shape());
  ops::gelu_forward(act, pre_);
  flops_ = 2.0 * x.dim(0) * (fc1_.in() * fc1_.out() + fc2_.in() * fc2_.out());
  return fc2_.forward(act);
}

Tensor Mlp::backward(const Tensor& dy) {
  Tensor dact = fc2_.backward(dy);
  Tensor dpre(pre_.shape());
  ops::gelu_backward(dpre, dact, pre_);
  return fc1_.backward(dpre);
}

CausalSelfAttention::CausalSelfAttention(ParamStore& ps, const std::string& name, int64_t C,
                                         int64_t H, Rng& rng, float std, float out_std)
    : qkv_(ps, name + ".qkv", C, 3 * C, rng, std), proj_(ps, name + ".proj", C, C, rng, out_std),
      C_(C), H_(H) {}

Tensor CausalSelfAttention::forward(const Tensor& x, int64_t B, int64_t T) {
  shape_ = {B, T, C_, H_};
  qkv_out_ = qkv_.forward(x).reshape({B, T, 3 * C_});
  att_ = Tensor({B, H_, T, T});
  Tensor y({B, T, C_});
  ops::attention_forward(y, att_, qkv_out_, shape_);
  flops_ = flops(B, T);
  return proj_.forward(y.reshape({B * T, C_}));
}

double CausalSelfAttention::flops(int64_t B, int64_t T) const {
  // Projections 2*N*C*4C; scores and weighted sum 2 * 2*B*H*(T*T/2)*D (causal half).
  return 2.0 * B * T * (4.0 * C_ * C_) + 2.0 * B * T * T * C_;
}

Tensor CausalSelfAttention::backward(const Tensor& dy) {
  Tensor dyatt = proj_.backward(dy);
  Tensor dqkv(qkv_out_.shape());
  ops::attention_backward(dqkv, dyatt.reshape({shape_.B, shape_.T, C_}), qkv_out_, att_, shape_);
  return qkv_.backward(dqkv.reshape({shape_.B * shape_.T, 3 * C_}));
}

}  // namespace sy
