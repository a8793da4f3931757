#include "runtime/model.h"

#include <algorithm>
#include <cmath>

#include "ops/cross_entropy.h"
#include "ops/dispatch.h"

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
             std::unique_ptr<FeedForward> ffn, Rng& rng, const switchyard::DepthConfig* depth,
             const SparseAttentionSpec* sparse)
    : ln1_(ps, name + ".ln1", m.d_model(), rng),
      ln2_(ps, name + ".ln2", m.d_model(), rng),
      ffn_(std::move(ffn)) {
  const float out_std = m.init_std() / std::sqrt(2.f * m.n_layers());
  if (sparse)
    attn_ = std::make_unique<SparseSelfAttention>(ps, name + ".attn", m.d_model(), m.n_heads(), *sparse,
                                                  rng, m.init_std(), out_std);
  else
    attn_ = std::make_unique<CausalSelfAttention>(ps, name + ".attn", m.d_model(), m.n_heads(), rng,
                                                  m.init_std(), out_std);
  if (depth) depth_ = std::make_unique<DepthRouter>(ps, name + ".depth", m.d_model(), *depth, rng, m.init_std());
}

void Block::set_training(bool t) {
  training_ = t;
  attn_->set_training(t);
  ffn_->set_training(t);
}

Tensor Block::inner_forward(const Tensor& x, int64_t B, int64_t T) {
  Tensor h = attn_->forward(ln1_.forward(x), B, T);
  add_into(h, x);
  Tensor out = ffn_->forward(ln2_.forward(h));
  add_into(out, h);
  flops_ += attn_->forward_flops() + ffn_->forward_flops();
  return out;
}

Tensor Block::inner_backward(const Tensor& dy) {
  Tensor dh = ln2_.backward(ffn_->backward(dy));
  add_into(dh, dy);
  Tensor dx = ln1_.backward(attn_->backward(dh));
  add_into(dx, dh);
  return dx;
}

Tensor Block::forward(const Tensor& x, int64_t B, int64_t T) {
  flops_ = 0;
  if (!depth_) {
    Tensor y = inner_forward(x, B, T);
    dense_flops_ = flops_;
    return y;
  }
  const int64_t C = x.dim(1);
  const ops::Route& r = depth_->select(x, B, T, training_);
  Tensor xs({r.rows(), C});
  ops::dispatch_forward(xs, x, r);
  // Routed rows are sequence-major and in position order within a sequence,
  // so each sequence's routed tokens form one causal sub-sequence.
  const std::vector<int64_t> n = depth_->per_sequence(B, T);
  const bool uniform = std::all_of(n.begin(), n.end(), [&](int64_t v) { return v == n[0]; });
  Tensor z;
  double ffn_flops = 0;
  if (uniform && n[0] > 0) {
    z = inner_forward(xs, B, n[0]);
    ffn_flops = ffn_->forward_flops();
  } else {
    // Different counts per sequence (the causal predictor at evaluation): one
    // sequence at a time. Activations are not kept for backward here.
    SY_CHECK(!training_, "depth routing in training must route the same count per sequence");
    z = Tensor({r.rows(), C});
    int64_t row = 0;
    for (int64_t b = 0; b < B; ++b) {
      if (n[b] == 0) continue;
      Tensor xb({n[b], C});
      std::copy_n(xs.f32() + row * C, n[b] * C, xb.f32());
      Tensor zb = inner_forward(xb, 1, n[b]);
      ffn_flops += ffn_->forward_flops();
      std::copy_n(zb.f32(), n[b] * C, z.f32() + row * C);
      row += n[b];
    }
  }
  // Router: 2*N*C (score) + 2*N*C (predictor).
  flops_ += 4.0 * B * T * C;
  dense_flops_ = attn_->flops(B, T) + (r.rows() > 0 ? ffn_flops * B * T / r.rows() : 0.0);
  return depth_->combine(x, z);
}

Tensor Block::backward(const Tensor& dy) {
  if (!depth_) return inner_backward(dy);
  Tensor dx(dy.shape());
  Tensor dz = depth_->backward(dy, dx);
  if (dz.dim(0) > 0) ops::dispatch_backward(dx, inner_backward(dz), depth_->route());
  return dx;
}

Transformer::Transformer(const Config& cfg, ParallelContext* par)
    : cfg_(cfg), C_(cfg.model().d_model()), V_(cfg.model().vocab_size()), T_(cfg.model().seq_len()) {
  const auto& m = cfg.model();
  Rng rng(cfg.train().seed());
  const float std = m.init_std(), out_std = std / std::sqrt(2.f * m.n_layers());
  wte_ = params_.add("wte", {V_, C_}, rng, std, false);
  wpe_ = params_.add("wpe", {T_, C_}, rng, std, false);
  blocks_.reserve(m.n_layers());
  const auto& at = cfg.attention();
  if (at.kind() == switchyard::AttentionConfig::ROUTED && at.share_centroids())
    shared_centroids_.assign(at.num_routing_heads(),
                             ops::Centroids(cluster_count(at, T_), C_ / m.n_heads()));
  for (int l = 0; l < m.n_layers(); ++l) {
    const std::string name = "h" + std::to_string(l);
    const auto& moe = cfg.moe();
    std::unique_ptr<FeedForward> ffn;
    if (moe.num_experts() > 0 && (l + 1) % moe.every_n_layers() == 0) {
      auto layer = std::make_unique<MoeLayer>(params_, name + ".moe", C_, moe, m.ffn_hidden(), rng,
                                              std, out_std, cfg.train().seed() * 1000003 + l, par);
      moe_.emplace_back(l, layer.get());
      ffn = std::move(layer);
    } else {
      ffn = std::make_unique<Mlp>(params_, name + ".mlp", C_, m.ffn_hidden(), rng, std, out_std);
    }
    const auto& dp = cfg.depth();
    const bool depth_routed = dp.every_n_layers() > 0 && (l + 1) % dp.every_n_layers() == 0;
    const auto& at = cfg.attention();
    const bool sparse = at.kind() != switchyard::AttentionConfig::DENSE &&
                        (at.last_n_layers() == 0 || l >= m.n_layers() - at.last_n_layers());
    SparseAttentionSpec spec{at, T_, shared_centroids_.empty() ? nullptr : &shared_centroids_,
                             cfg.train().seed() * 7919 + l};
    blocks_.emplace_back(params_, name, m, std::move(ffn), rng, depth_routed ? &dp : nullptr,
                         sparse ? &spec : nullptr);
  }
  ln_f_ = std::make_unique<LayerNorm>(params_, "ln_f", C_, rng);
  // Routed attention: centroid statistics are summed over data-parallel
  // ranks before each EMA update, so every replica keeps the same centroids.
  if (par && par->world_size() > 1)
    for (auto& b : blocks_)
      if (auto* sa = dynamic_cast<SparseSelfAttention*>(&b.attention()))
        sa->set_stats_reducer([par](std::vector<float>& v) {
          par->world->all_reduce_sum(v.data(), static_cast<int64_t>(v.size()), "routed attention centroids");
        });
  head_ = std::make_unique<Linear>(params_, "head", C_, V_, rng, std, false);
}

void Transformer::set_training(bool training) {
  training_ = training;
  for (auto& b : blocks_) b.set_training(training);
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
  for (const auto& b : blocks_) {
    if (b.depth()) s += b.depth()->aux_loss();
    s += b.attention().aux_loss();
  }
  return s;
}

double Transformer::forward_flops() const {
  double f = 2.0 * B_ * T_ * C_ * V_;
  for (const auto& b : blocks_) f += b.forward_flops();
  return f;
}

double Transformer::dense_forward_flops() const {
  double f = 2.0 * B_ * T_ * C_ * V_;
  for (const auto& b : blocks_) f += b.dense_flops();
  return f;
}

}  // namespace sy
