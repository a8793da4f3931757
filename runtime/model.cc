#include "runtime/model.h"

#include <algorithm>
#include <cmath>

#include "ops/cross_entropy.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/finite.h"
#include "runtime/cost_model.h"
#include "runtime/optimizer_shard.h"

namespace sy {

NormKind norm_kind(const switchyard::ModelConfig& m) {
  return m.norm() == switchyard::ModelConfig::RMSNORM ? NormKind::rmsnorm : NormKind::layernorm;
}

FfnOptions ffn_options(const switchyard::ModelConfig& m) {
  FfnOptions o;
  o.act = m.activation() == switchyard::ModelConfig::SWIGLU ? ops::FfnActivation::swiglu : ops::FfnActivation::gelu;
  o.bias = m.bias();
  return o;
}

AttentionOptions attention_options(const switchyard::ModelConfig& m) {
  AttentionOptions o;
  o.bias = m.bias();
  o.rope = m.position() == switchyard::ModelConfig::ROPE;
  o.rope_base = m.rope_base();
  o.kv_heads = kv_heads(m);
  return o;
}

bool bf16_attention(const switchyard::Config& cfg) {
  const auto& m = cfg.model();
  const int64_t D = m.d_model() / m.n_heads();
  return cfg.precision() == switchyard::Config::BF16 && (D == 64 || D == 128);
}

Block::Block(Ctx& ctx, ParamStore& ps, const std::string& name, const switchyard::ModelConfig& m,
             std::unique_ptr<FeedForward> ffn, Rng& rng, const switchyard::DepthConfig* depth,
             const SparseAttentionSpec* sparse, bool bf16_attention)
    : ctx_(&ctx),
      rope_(m.position() == switchyard::ModelConfig::ROPE),
      ln1_(make_norm(norm_kind(m), ctx, ps, name + ".ln1", m.d_model(), rng)),
      ln2_(make_norm(norm_kind(m), ctx, ps, name + ".ln2", m.d_model(), rng)),
      ffn_(std::move(ffn)),
      dense_ffn_flops_(ffn_flops_per_token(m, m.ffn_hidden())) {
  const float out_std = m.init_std() / std::sqrt(2.f * m.n_layers());
  AttentionOptions ao = attention_options(m);
  // Every kind: dense attention, a routed layer's local and routing heads,
  // block top-k's heads (SparseSelfAttention::bf16_heads).
  ao.bf16 = bf16_attention;
  if (sparse)
    attn_ = std::make_unique<SparseSelfAttention>(ctx, ps, name + ".attn", m.d_model(), m.n_heads(), *sparse,
                                                  rng, m.init_std(), out_std, ao);
  else
    attn_ = std::make_unique<CausalSelfAttention>(ctx, ps, name + ".attn", m.d_model(), m.n_heads(), rng,
                                                  m.init_std(), out_std, ao);
  if (depth)
    depth_ = std::make_unique<DepthRouter>(ctx, ps, name + ".depth", m.d_model(), *depth, rng, m.init_std());
}

void Block::set_training(bool t) {
  training_ = t;
  attn_->set_training(t);
  ffn_->set_training(t);
}

Tensor Block::inner_forward(const Tensor& x, int64_t B, int64_t T, const Tensor& positions) {
  // The norms write bf16 where the next GEMM reads bf16 (bf16 mode): the
  // values it would round them to, one pass fewer.
  auto dtype_for = [](bool bf16) { return bf16 ? DType::bf16 : DType::f32; };
  Tensor h = attn_->forward(ln1_->forward(x, dtype_for(attn_->reads_bf16())), B, T, positions);
  ops::add_into(*ctx_, h, x);
  ffn_->set_sequence_length(T);
  Tensor out = ffn_->forward(ln2_->forward(h, dtype_for(ffn_->reads_bf16())));
  ops::add_into(*ctx_, out, h);
  attn_flops_ += attn_->forward_flops();
  ffn_flops_ += ffn_->forward_flops() - ffn_->router_flops();
  router_flops_ += ffn_->router_flops();
  flops_ += attn_->forward_flops() + ffn_->forward_flops();
  return out;
}

Tensor Block::decode(const Tensor& x, int64_t pos, Tensor& k, Tensor& v, std::vector<int64_t>& counts,
                     int64_t& rows, DecodeState& attn) {
  SY_CHECK(!training_, "Block::decode: evaluation mode");
  if (!depth_) return inner_decode(x, pos, k, v, counts, rows, attn);
  SY_CHECK(depth_->causal_at_eval(), "Block::decode: a depth router choosing by top-C over the window (depth."
                                     "predictor_at_eval false) cannot decide for one token");
  // The predictor's decision for this token alone, as for each token of a
  // window (a threshold: causal() admits no other at evaluation).
  const ops::Route& r = depth_->select(x, 1, 1, false);
  const Tensor z = r.rows() > 0 ? inner_decode(x, pos, k, v, counts, rows, attn)
                                : Tensor::empty({0, x.dim(1)}, DType::f32, *ctx_);
  return depth_->combine(x, z);
}

Tensor Block::inner_decode(const Tensor& x, int64_t pos, Tensor& k, Tensor& v, std::vector<int64_t>& counts,
                           int64_t& rows, DecodeState& attn) {
  Tensor h = attn_->decode(ln1_->forward(x), pos, rows++, k, v, attn);
  ops::add_into(*ctx_, h, x);
  ffn_->set_sequence_length(1);
  Tensor out = ffn_->decode(ln2_->forward(h), k.dim(0), counts);
  ops::add_into(*ctx_, out, h);
  return out;
}

Tensor Block::inner_backward(const Tensor& dy) {
  // out = h + f(ln2(h)), h = x + a(ln1(x)): dh = dy + ln2'(f'(dy)), dx = dh +
  // ln1'(a'(dh)). The norms' backward adds into the residual's buffer (one
  // copy of dy, which is the caller's, made after the FFN's backward so it
  // is not held through it; dh is ours and dead after its last read, so dx
  // takes its storage): one pass and launch where a zeroed buffer and an add
  // for each term took four (about 300 MB a block of switch_gpu at batch 16).
  // Each element is dy + the norm's term (on the GPU the kernels' += is one
  // FMA with dy: one rounding where zero + the term, then + dy, took two).
  const Tensor df = ffn_->backward(dy);
  Tensor dh = dy.clone(*ctx_);
  ln2_->backward_into(df, dh);
  ln1_->backward_into(attn_->backward(dh), dh);  // (a'(dh) is read from dh before the norm adds into it)
  return dh;
}

Tensor Block::forward(const Tensor& x, int64_t B, int64_t T) {
  input_ = Tensor();
  Tensor y = run_forward(x, B, T);
  if (!recompute_) return y;  // a backward reads this forward's saved activations
  // Recomputing: nothing is held past the block, in evaluation (no backward
  // follows) as in training (the backward repeats the forward from x).
  release();
  if (training_) input_ = x, B_ = B, T_ = T;
  return y;
}

void Block::release() {
  ln1_->release();
  ln2_->release();
  attn_->release();
  ffn_->release();
  if (depth_) depth_->release();
}

namespace {
// A FeedForward flag (pool_statistics, set_padding) on for a scope, off
// however the scope ends; nothing where `on` is false.
struct FfnFlag {
  FeedForward& f;
  void (FeedForward::*set)(bool);
  bool on;
  FfnFlag(FeedForward& ffn, void (FeedForward::*setter)(bool), bool enable) : f(ffn), set(setter), on(enable) {
    if (on) (f.*set)(true);
  }
  ~FfnFlag() {
    if (on) (f.*set)(false);
  }
};
}  // namespace

Tensor Block::run_forward(const Tensor& x, int64_t B, int64_t T) {
  flops_ = attn_flops_ = ffn_flops_ = router_flops_ = 0;
  const int64_t C = x.dim(1);
  dense_attn_flops_ = attn_->flops(B, T);
  dense_flops_ = dense_attn_flops_ + static_cast<double>(B * T) * dense_ffn_flops_;
  if (!depth_) return inner_forward(x, B, T);
  const ops::Route& r = depth_->select(x, B, T, training_);
  Tensor xs = Tensor::empty({r.rows(), C}, DType::f32, *ctx_);
  ops::dispatch_forward(*ctx_, xs, x, r);
  // Routed rows are sequence-major and in position order within a sequence,
  // so each sequence's routed tokens form one causal sub-sequence. The counts
  // are known on the host under top-C routing (no device read in training).
  const std::vector<int64_t> n = depth_->per_sequence(B, T);
  const bool uniform = std::all_of(n.begin(), n.end(), [&](int64_t v) { return v == n[0]; });
  // Rotary positions: routed tokens keep their positions in the full sequence,
  // computed on the route's device.
  const Tensor pos = rope_ ? depth_->positions(T) : Tensor();
  Tensor z;
  // A MoE block evaluates one sequence a call, whatever the counts: its
  // capacity is then each sequence's own, not the batch's only when the
  // counts happen to be equal; and on several ranks its collectives (routing
  // sums, the expert exchange) pair up call by call, so every rank makes B
  // calls, a sequence with no routed token one row of zeros whose output is
  // dropped. (One call on a rank whose counts were equal against one a
  // sequence on another would hang, or sum another call's statistics.)
  const bool per_sequence = moe_ && !training_;
  if (uniform && n[0] > 0 && !per_sequence) {
    z = inner_forward(xs, B, n[0], pos);
  } else {
    // Different counts per sequence (the causal predictor at evaluation): one
    // sequence at a time. Activations are not kept for backward here.
    SY_CHECK(!training_, "depth routing in training must route the same count per sequence");
    z = Tensor::empty({r.rows(), C}, DType::f32, *ctx_);
    // The MoE layer's statistics after the forward are over every
    // sequence's tokens, as one call's would be (not the last call's); the
    // padding rows count in none, nor in the block's FLOPs.
    const FfnFlag pooled(*ffn_, &FeedForward::pool_statistics, per_sequence);
    int64_t row = 0;
    for (int64_t b = 0; b < B; ++b) {
      if (n[b] == 0) {
        if (per_sequence && ranks_ > 1) {
          const double counted[] = {flops_, attn_flops_, ffn_flops_, router_flops_};
          const FfnFlag padding(*ffn_, &FeedForward::set_padding, true);
          (void)inner_forward(Tensor::zeros({1, C}, DType::f32, *ctx_), 1, 1,
                              rope_ ? Tensor::zeros({1}, DType::i32, *ctx_) : Tensor());
          flops_ = counted[0], attn_flops_ = counted[1], ffn_flops_ = counted[2], router_flops_ = counted[3];
        }
        continue;
      }
      Tensor zb = inner_forward(xs.rows(row, row + n[b]), 1, n[b], rope_ ? pos.rows(row, row + n[b]) : Tensor());
      Tensor dst = z.rows(row, row + n[b]);
      dst.copy_from(zb, *ctx_);
      row += n[b];
    }
  }
  // Router: 2*N*C (score) + 2*N*C (predictor).
  flops_ += 4.0 * B * T * C;
  router_flops_ += 4.0 * B * T * C;
  return depth_->combine(x, z);
}

Tensor Block::backward(const Tensor& dy) {
  const bool repeat = input_.defined();
  if (repeat) {
    // The same forward again (the routers' draws are keyed by step and
    // token; the routing state records nothing twice: set_replay), so the
    // backward below reads what one pass would have saved, bit for bit.
    struct Replay {  // (cleared however the repeat ends)
      Block& b;
      explicit Replay(Block& block) : b(block) { set(true); }
      ~Replay() { set(false); }
      void set(bool r) {
        b.attn_->set_replay(r);
        b.ffn_->set_replay(r);
      }
    } replay(*this);
    run_forward(input_, B_, T_);
    input_ = Tensor();
  }
  Tensor dx;
  if (!depth_) {
    dx = inner_backward(dy);
  } else {
    dx = Tensor::zeros(dy.shape(), DType::f32, *ctx_);
    Tensor dz = depth_->backward(dy, dx);
    if (dz.dim(0) > 0) ops::dispatch_backward(*ctx_, dx, inner_backward(dz), depth_->route());
  }
  // Dropped now, not at the next forward: the blocks before this one (a
  // repeat among them) then run their backward without this one's.
  release();
  return dx;
}

Transformer::Transformer(Ctx& ctx, const Config& cfg, ParallelContext* par, bool inference_only)
    : ctx_(ctx), cfg_(cfg), C_(cfg.model().d_model()), V_(cfg.model().vocab_size()), T_(cfg.model().seq_len()) {
  const auto& m = cfg.model();
  Rng rng(cfg.train().seed());
  const float std = m.init_std(), out_std = std / std::sqrt(2.f * m.n_layers());
  wte_ = params_.add("wte", {V_, C_}, rng, std, false);
  if (m.position() == switchyard::ModelConfig::LEARNED) wpe_ = params_.add("wpe", {T_, C_}, rng, std, false);
  blocks_.reserve(m.n_layers());
  const auto& at = cfg.attention();
  if (at.kind() == switchyard::AttentionConfig::ROUTED && at.share_centroids())
    for (int r = 0; r < at.num_routing_heads(); ++r)
      shared_centroids_.emplace_back(cluster_count(at, T_), C_ / m.n_heads(), ctx_);
  // Every MoE layer's budget: moe.budget, or what budget.target leaves for
  // the experts (runtime/cost_model.h).
  moe_budget_ = effective_moe_budget(cfg);
  switchyard::MoeConfig moe = cfg.moe();
  moe.set_budget(static_cast<float>(moe_budget_));
  for (int l = 0; l < m.n_layers(); ++l) {
    block_offset_.push_back(params_.numel(ParamKind::dense));
    const std::string name = "h" + std::to_string(l);
    std::unique_ptr<FeedForward> ffn;
    if (is_moe_layer(moe, l)) {
      auto layer = std::make_unique<MoeLayer>(ctx_, params_, name + ".moe", C_, moe, m.ffn_hidden(), rng,
                                              std, out_std, cfg.train().seed() * 1000003 + l, par, ffn_options(m));
      moe_.emplace_back(l, layer.get());
      ffn = std::move(layer);
    } else {
      ffn = std::make_unique<Mlp>(ctx_, params_, name + ".mlp", C_, m.ffn_hidden(), rng, std, out_std,
                                  ffn_options(m));
    }
    const auto& dp = cfg.depth();
    const bool depth_routed = is_depth_routed(dp, l);
    const auto& at = cfg.attention();
    const bool sparse = is_sparse_attention_layer(at, l, m.n_layers());
    SparseAttentionSpec spec{at, T_, shared_centroids_.empty() ? nullptr : &shared_centroids_,
                             cfg.train().seed() * 7919 + l};
    blocks_.emplace_back(ctx_, params_, name, m, std::move(ffn), rng, depth_routed ? &dp : nullptr,
                         sparse ? &spec : nullptr, bf16_attention(cfg));
    blocks_.back().set_recompute(l < recomputed_blocks(cfg));
    blocks_.back().set_moe(is_moe_layer(moe, l), par ? par->world_size() : 1);
  }
  // The depth routers write their statistics into one buffer, so that a
  // logged step reads them for every routed block in one copy.
  std::vector<DepthRouter*> depth;
  for (auto& b : blocks_)
    if (b.depth()) depth.push_back(b.depth());
  if (!depth.empty()) {
    auto stats = std::make_shared<DepthStatsBuffer>(ctx_, static_cast<int64_t>(depth.size()));
    for (size_t j = 0; j < depth.size(); ++j) depth[j]->share_stats(stats, static_cast<int64_t>(j));
  }
  tail_offset_ = params_.numel(ParamKind::dense);
  ln_f_ = make_norm(norm_kind(m), ctx_, params_, "ln_f", C_, rng);
  // Routed attention: every replica starts from rank 0's warm-up centroids
  // and sums the cluster statistics over data-parallel ranks before each EMA
  // update, so all keep the same centroids.
  if (par && par->world_size() > 1)
    for (auto& b : blocks_)
      if (auto* sa = dynamic_cast<SparseSelfAttention*>(&b.attention())) {
        sa->set_stats_reducer([par, this](Tensor& t) {
          par->world->all_reduce_sum(t, ctx_.stream, "routed attention centroids");
        });
        sa->set_centroid_broadcaster([par, this](Tensor& t) {
          par->world->broadcast(t, 0, ctx_.stream, "routed attention centroids");
        });
      }
  if (m.tie_embeddings())
    head_ = std::make_unique<Linear>(ctx_, wte_);  // logits = x wte^T
  else
    head_ = std::make_unique<Linear>(ctx_, params_, "head", C_, V_, rng, std, false);
  params_.set_bf16_shadows(cfg.precision() == switchyard::Config::BF16);
  if (par && cfg.parallel().shard_optimizer()) shard_moments(params_, *par);
  params_.set_inference_only(inference_only);
  params_.finalize(ctx_);
}

void Transformer::set_training(bool training) {
  training_ = training;
  for (auto& b : blocks_) b.set_training(training);
}

bool Transformer::needs_calibration() const {
  for (const auto& b : blocks_)
    if (const auto* sa = dynamic_cast<const SparseSelfAttention*>(&b.attention()))
      if (sa->needs_calibration()) return true;
  return false;
}

void Transformer::calibrate(const Batch& warmup) {
  const bool was_training = training_;
  set_training(false);
  for (auto& b : blocks_)
    if (auto* sa = dynamic_cast<SparseSelfAttention*>(&b.attention())) sa->calibrate_next_forward();
  forward(warmup);
  set_training(was_training);
}

void Transformer::end_step() {
  for (auto& [l, layer] : moe_) layer->end_step();
  for (auto& b : blocks_)
    if (auto* sa = dynamic_cast<SparseSelfAttention*>(&b.attention())) sa->update_centroids();
}

void Transformer::set_step(int64_t step) {
  for (auto& [l, layer] : moe_) layer->set_step(step);
}

void Transformer::set_micro_batch(int m, int n) {
  for (auto& [l, layer] : moe_) layer->set_micro_batch(m, n);
}

float Transformer::forward(const Batch& batch) {
  const int64_t N = static_cast<int64_t>(batch.inputs.size());
  SY_CHECK(N % T_ == 0, "batch of " << N << " tokens is not a multiple of seq_len " << T_);
  SY_CHECK(static_cast<int64_t>(batch.targets.size()) == N,
           "batch of " << N << " inputs with " << batch.targets.size() << " targets");
  B_ = N / T_;
  // Inputs and targets travel together: one host-to-device copy per batch.
  std::vector<int32_t> tokens(batch.inputs);
  tokens.insert(tokens.end(), batch.targets.begin(), batch.targets.end());
  const Tensor both = Tensor::from_host(tokens).to(ctx_);
  inputs_ = both.rows(0, N);
  targets_ = both.rows(N, 2 * N);
  Tensor h = Tensor::empty({N, C_}, DType::f32, ctx_);
  ops::embedding_forward(ctx_, {h, inputs_, wte_->value, wpe_ ? wpe_->value : Tensor(), T_});
  auto check = [&](const Tensor& out, int part) {
    if (check_finite_ && first_nonfinite_ < 0 && ops::count_nonfinite(ctx_, out) > 0) first_nonfinite_ = part;
  };
  check(h, 0);
  for (Block& b : blocks_) b.ffn().set_token_ids(inputs_);  // (hash routing)
  for (size_t l = 0; l < blocks_.size(); ++l) {
    h = blocks_[l].forward(h, B_, T_);
    check(h, static_cast<int>(l) + 1);
  }
  Tensor logits = head_->forward(ln_f_->forward(h));
  logits_ = logits;
  ce_stats_ = Tensor::empty({logits.dim(0), 2}, DType::f32, ctx_);
  const float loss = ops::cross_entropy_forward(ctx_, {ce_stats_, logits, targets_});
  check(logits, static_cast<int>(blocks_.size()) + 1);
  if (check_finite_ && first_nonfinite_ < 0 && !std::isfinite(loss)) first_nonfinite_ = static_cast<int>(blocks_.size()) + 1;
  return loss;
}

KvCache Transformer::new_cache() const {
  KvCache c;
  for (const Block& b : blocks_) {
    const int64_t W = b.attention().kv_width();
    SY_CHECK(W > 0, "a key/value cache needs dense, causal routed or block top-k attention in every block");
    c.k.push_back(Tensor::zeros({T_, W}, DType::f32, host_ctx()));
    c.v.push_back(Tensor::zeros({T_, W}, DType::f32, host_ctx()));
    c.counts.emplace_back();
    c.rows.push_back(0);
    c.attn.push_back(b.attention().decode_state(T_));
  }
  for (const auto& [l, layer] : moe_) c.counts[l].assign(layer->num_experts(), 0);
  return c;
}

Tensor Transformer::decode(int32_t token, int64_t pos, KvCache& cache) {
  SY_CHECK(ctx_.device.is_cpu(), "Transformer::decode runs on the CPU");
  SY_CHECK(pos >= 0 && pos < T_, "decode at position " << pos << " of a window of " << T_);
  SY_CHECK(token >= 0 && token < V_, "token " << token << " outside the vocabulary of " << V_);
  SY_CHECK(cache.k.size() == blocks_.size() && cache.v.size() == blocks_.size() &&
               cache.counts.size() == blocks_.size() && cache.rows.size() == blocks_.size() &&
               cache.attn.size() == blocks_.size(),
           "a cache of another model");
  if (pos == 0) {  // a new window: no expert has a slot taken, no attention holds a token
    for (auto& c : cache.counts) std::fill(c.begin(), c.end(), 0);
    std::fill(cache.rows.begin(), cache.rows.end(), 0);
    for (DecodeState& a : cache.attn) a.zero();
  }
  const Tensor id = Tensor::from_host(std::vector<int32_t>{token});
  Tensor h = Tensor::empty({1, C_}, DType::f32, ctx_);
  // Position pos of the table as the one row of a sequence of 1.
  ops::embedding_forward(ctx_, {h, id, wte_->value, wpe_ ? wpe_->value.rows(pos, pos + 1) : Tensor(), 1});
  for (size_t l = 0; l < blocks_.size(); ++l) {
    blocks_[l].ffn().set_token_ids(id);  // (hash routing)
    h = blocks_[l].decode(h, pos, cache.k[l], cache.v[l], cache.counts[l], cache.rows[l], cache.attn[l]);
  }
  return head_->forward(ln_f_->forward(h));
}

int Transformer::first_nonfinite_part(const Batch& batch) {
  check_finite_ = true;
  first_nonfinite_ = -1;
  forward(batch);
  check_finite_ = false;
  return first_nonfinite_;
}

std::string Transformer::part_name(int part) const {
  if (part == 0) return "embedding";
  if (part >= 1 && part <= static_cast<int>(blocks_.size())) return "block h" + std::to_string(part - 1);
  return "head";
}

std::vector<CentroidSetRef> Transformer::centroid_sets() {
  std::vector<CentroidSetRef> out;
  for (size_t r = 0; r < shared_centroids_.size(); ++r)
    out.push_back({"attn.shared_centroids." + std::to_string(r), &shared_centroids_[r]});
  for (size_t l = 0; l < blocks_.size(); ++l)
    if (auto* sa = dynamic_cast<SparseSelfAttention*>(&blocks_[l].attention()); sa && sa->owns_centroids())
      for (size_t r = 0; r < sa->centroids().size(); ++r)
        out.push_back({"h" + std::to_string(l) + ".attn.centroids." + std::to_string(r), &sa->centroids()[r]});
  return out;
}

std::vector<std::pair<std::string, Tensor>> Transformer::balance_biases() {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [l, layer] : moe_) out.emplace_back("h" + std::to_string(l) + ".moe.router.balance_bias", layer->balance_bias());
  return out;
}

void Transformer::backward(const std::function<void(int64_t)>& ready) {
  SY_CHECK(!params_.inference_only(), "Transformer::backward: a model built for inference only has no gradients");
  Tensor dlogits = Tensor::empty(logits_.shape(), DType::f32, ctx_);
  ops::cross_entropy_backward(ctx_, {dlogits, logits_, ce_stats_, targets_});
  // Tied embeddings: the head's gradient lands in wte (offset 0), which is
  // final only after the embedding's below, so ready(tail_offset_) still holds.
  Tensor dh = ln_f_->backward(head_->backward(dlogits));
  if (ready) ready(tail_offset_);
  for (size_t l = blocks_.size(); l-- > 0;) {
    dh = blocks_[l].backward(dh);
    if (ready) ready(block_offset_[l]);
  }
  Tensor no_wpe;
  ops::embedding_backward(ctx_, {wte_->grad, wpe_ ? wpe_->grad : no_wpe, dh, inputs_, T_});
  params_.finish_grads(ctx_);  // (expert gradients no backward wrote: zeros)
  if (ready) ready(0);
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

double Transformer::cost_unit() const { return ffn_flops_per_token(cfg_.model(), cfg_.model().ffn_hidden()); }

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

ComputeParts Transformer::compute_parts() const {
  ComputeParts p;
  p.head = 2.0 * B_ * T_ * C_ * V_;
  for (const auto& b : blocks_) {
    p.attention += b.attention_flops();
    p.ffn += b.ffn_flops();
    p.routers += b.router_flops();
    p.dense_attention += b.dense_attention_flops();
    p.dense_ffn += b.dense_ffn_flops();
  }
  return p;
}

}  // namespace sy
