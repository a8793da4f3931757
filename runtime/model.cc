#include "runtime/model.h"

#include <cmath>

#include "ops/cross_entropy.h"

namespace sy {

namespace {
// a += b, elementwise.
void add_into(Tensor& a, const Tensor& b) {
  check_shape(b, a.shape(), "residual add");
  float* p = a.f32();
  const float* q = b.f32();
  for (int64_t i = 0; i < a.numel(); ++i) p[i] += q[i];
}
}  // namespace

Block::Block(ParamStore& ps, const std::string& name, const switchyard::ModelConfig& m,
             std::unique_ptr<FeedForward> ffn, Rng& rng)
    : ln1_(ps, name + ".ln1", m.d_model(), rng),
      ln2_(ps, name + ".ln2", m.d_model(), rng),
      attn_(ps, name + ".attn", m.d_model(), m.n_heads(), rng, m.init_std(),
            m.init_std() / std::sqrt(2.f * m.n_layers())),
      ffn_(std::move(ffn)) {}

Tensor Block::forward(const Tensor& x, int64_t B, int64_t T) {
  Tensor h = attn_.forward(ln1_.forward(x), B, T);
  add_into(h, x);
  Tensor out = ffn_->forward(ln2_.forward(h));
  add_into(out, h);
  return out;
}

Tensor Block::backward(const Tensor& dy) {
  Tensor dh = ln2_.backward(ffn_->backward(dy));
  add_into(dh, dy);
  Tensor dx = ln1_.backward(attn_.backward(dh));
  add_into(dx, dh);
  return dx;
}

Transformer::Transformer(const Config& cfg)
    : cfg_(cfg), C_(cfg.model().d_model()), V_(cfg.model().vocab_size()), T_(cfg.model().seq_len()) {
  const auto& m = cfg.model();
  Rng rng(cfg.train().seed());
  const float std = m.init_std(), out_std = std / std::sqrt(2.f * m.n_layers());
  wte_ = params_.add("wte", {V_, C_}, rng, std, false);
  wpe_ = params_.add("wpe", {T_, C_}, rng, std, false);
  blocks_.reserve(m.n_layers());
  for (int l = 0; l < m.n_layers(); ++l) {
    const std::string name = "h" + std::to_string(l);
    const auto& moe = cfg.moe();
    std::unique_ptr<FeedForward> ffn;
    if (moe.num_experts() > 0 && (l + 1) % moe.every_n_layers() == 0) {
      auto layer = std::make_unique<MoeLayer>(params_, name + ".moe", C_, moe, m.ffn_hidden(), rng,
                                              std, out_std, cfg.train().seed() * 1000003 + l);
      moe_.emplace_back(l, layer.get());
      ffn = std::move(layer);
    } else {
      ffn = std::make_unique<Mlp>(params_, name + ".mlp", C_, m.ffn_hidden(), rng, std, out_std);
    }
    blocks_.emplace_back(params_, name, m, std::move(ffn), rng);
  }
  ln_f_ = std::make_unique<LayerNorm>(params_, "ln_f", C_, rng);
  head_ = std::make_unique<Linear>(params_, "head", C_, V_, rng, std, false);
}

void Transformer::set_training(bool training) {
  training_ = training;
  for (auto& b : blocks_) b.ffn().set_training(training);
}

float Transformer::forward(const Batch& batch) {
  const int64_t N = static_cast<int64_t>(batch.inputs.size());
  SY_CHECK(N % T_ == 0, "batch of " << N << " tokens is not a multiple of seq_len " << T_);
  B_ = N / T_;
  inputs_ = batch.inputs;
  targets_ = batch.targets;
  Tensor h({N, C_});
  ops::embedding_forward(h, inputs_, T_, wte_->value, wpe_->value);
  for (auto& b : blocks_) h = b.forward(h, B_, T_);
  Tensor logits = head_->forward(ln_f_->forward(h));
  probs_ = Tensor(logits.shape());
  return ops::cross_entropy_forward(probs_, logits, targets_);
}

void Transformer::backward() {
  Tensor dlogits(probs_.shape());
  ops::cross_entropy_backward(dlogits, probs_, targets_);
  Tensor dh = ln_f_->backward(head_->backward(dlogits));
  for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) dh = it->backward(dh);
  ops::embedding_backward(wte_->grad, wpe_->grad, dh, inputs_, T_);
}

double Transformer::aux_loss() const {
  double s = 0;
  for (const auto& [l, layer] : moe_) s += layer->aux_loss();
  return s;
}

double Transformer::forward_flops() const {
  double f = 2.0 * B_ * T_ * C_ * V_;
  for (const auto& b : blocks_) f += b.forward_flops();
  return f;
}

}  // namespace sy
