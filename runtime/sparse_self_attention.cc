#include "runtime/sparse_self_attention.h"

#include <algorithm>
#include <cmath>

#include "ops/attention.h"
#include "ops/decode_attention.h"
#include "ops/elementwise.h"
#include "ops/heads.h"
#include "ops/layernorm.h"
#include "ops/rope.h"
#include "ops/sparse_attention.h"

namespace sy {

int64_t cluster_count(const switchyard::AttentionConfig& a, int64_t seq_len) {
  if (a.num_clusters() > 0) return a.num_clusters();
  return std::max<int64_t>(1, std::llround(std::sqrt(static_cast<double>(seq_len))));
}

AttentionPairs attention_pairs(const switchyard::AttentionConfig& a, int64_t n, int64_t n_heads, int64_t clusters) {
  const double dense = 0.5 * n * (n + 1.0);
  auto window_pairs = [&](double w) {
    w = std::min<double>(w, n);
    return n * w - 0.5 * w * (w - 1.0);  // sum_t min(t + 1, w)
  };
  double per_head_sum = 0;
  if (a.kind() == switchyard::AttentionConfig::ROUTED) {
    const double k = static_cast<double>(clusters > 0 ? clusters : cluster_count(a, n)), S = n / k;
    const double routing = k * 0.5 * S * (S + 1.0);  // balanced clusters of S, causal inside
    per_head_sum = a.num_routing_heads() * routing + (n_heads - a.num_routing_heads()) * window_pairs(a.window());
  } else if (a.kind() == switchyard::AttentionConfig::BLOCK_TOPK) {
    const double b = a.block_size();
    // own block (causal half) + up to topk earlier full blocks
    double pairs = 0;
    for (int64_t t = 0; t < n; ++t) pairs += (t % a.block_size()) + 1 + b * std::min<int64_t>(a.topk_blocks(), t / a.block_size());
    per_head_sum = n_heads * pairs;
  } else {
    per_head_sum = n_heads * dense;
  }
  return {per_head_sum / n_heads, dense};
}

SparseSelfAttention::SparseSelfAttention(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t C, int64_t H,
                                         const SparseAttentionSpec& spec, Rng& rng, float std, float out_std,
                                         const AttentionOptions& options)
    : ctx_(ctx),
      cfg_(spec.cfg),
      qkv_(ctx, ps, name + ".qkv", C, C + 2 * options.kv_heads_for(H) * (C / H), rng, std, options.bias),
      proj_(ctx, ps, name + ".proj", C, C, rng, out_std, options.bias),
      opt_(options),
      C_(C), H_(H), G_(options.kv_heads_for(H)), D_(C / H),
      R_(routed() ? spec.cfg.num_routing_heads() : 0),
      K_(cluster_count(spec.cfg, spec.seq_len)),
      rng_(spec.seed) {
  SY_CHECK(G_ >= 1 && H_ % G_ == 0, name << ": " << G_ << " key/value heads for " << H_ << " query heads");
  if (spec.shared && routed()) {
    centroids_ = spec.shared;
  } else {
    for (int64_t r = 0; r < R_; ++r) own_.emplace_back(K_, D_, ctx);
    centroids_ = &own_;
  }
}

double SparseSelfAttention::flops(int64_t B, int64_t T) const {
  return 2.0 * B * T * (C_ * static_cast<double>(qkv_width() + C_)) + 2.0 * B * T * T * C_;
}

ops::AttentionShape SparseSelfAttention::local_shape() const {
  ops::AttentionShape s{B_, T_, C_, H_};
  s.window = cfg_.window();
  s.heads = H_ - R_;
  return s;
}

namespace {
// Head h of sequence b: rows [b*T, (b+1)*T) of head h of an (H, B*T, D) tensor.
Tensor head(const Tensor& t, int64_t h, int64_t b, int64_t T) {
  const int64_t N = t.dim(1), D = t.dim(2);
  return t.reshape({t.dim(0) * N, D}).rows(h * N + b * T, h * N + (b + 1) * T);
}
}  // namespace

std::pair<size_t, size_t> SparseSelfAttention::decode_state_sizes(int64_t rows) const {
  if (kv_width() == 0) return {0, 0};
  if (routed()) return {static_cast<size_t>(R_ * (rows + 2 * K_)), 0};
  return {0, static_cast<size_t>(G_ * ((rows + cfg_.block_size() - 1) / cfg_.block_size()) * D_)};
}

DecodeState SparseSelfAttention::decode_state(int64_t rows) const {
  const auto [counts, values] = decode_state_sizes(rows);
  DecodeState s;
  s.counts.assign(counts, 0);
  s.values.assign(values, 0.f);
  return s;
}

Tensor SparseSelfAttention::decode(const Tensor& x, int64_t pos, int64_t row, Tensor& k, Tensor& v,
                                   DecodeState& state) {
  if (kv_width() == 0) return SelfAttention::decode(x, pos, row, k, v, state);  // (refuses)
  const int64_t W = kv_width(), T = k.dim(0), rep = H_ / G_;
  const auto [counts, values] = decode_state_sizes(T);
  SY_CHECK(v.dim(0) == T && state.counts.size() == counts && state.values.size() == values,
           "decode: a cache of " << shape_str(k.shape()) << " with " << state.counts.size() << " counts and "
                                 << state.values.size() << " values of state");
  const Tensor qkv = decode_projection(ctx_, qkv_, x, pos, row, k, v, C_, H_, G_, opt_);
  const float* r = qkv.f32();
  if (!routed() && (row + 1) % cfg_.block_size() == 0) {
    // Block row / block_size is complete: its mean per key head, summed in
    // row order then divided, as block_topk_keysets makes it.
    const int64_t bs = cfg_.block_size(), b = row / bs, nb = (T + bs - 1) / bs;
    for (int64_t g = 0; g < G_; ++g)
      ops::block_key_mean(state.values.data() + (g * nb + b) * D_, k.f32() + b * bs * W + g * D_, bs, W, D_);
  }
  Tensor y = Tensor::zeros({C_}, DType::f32, ctx_);
  for (int64_t h = 0; h < H_; ++h) {
    const int64_t g = h / rep;  // its key/value head
    const std::vector<int64_t> keys = decode_keys(h, r, row, k, state);
    if (keys.empty()) continue;  // o = 0
    Tensor kk = Tensor::empty({static_cast<int64_t>(keys.size()), D_}, DType::f32, ctx_), vv = kk.clone();
    for (size_t i = 0; i < keys.size(); ++i) {
      std::copy_n(k.f32() + keys[i] * W + g * D_, D_, kk.f32() + i * D_);
      std::copy_n(v.f32() + keys[i] * W + g * D_, D_, vv.f32() + i * D_);
    }
    Tensor q = Tensor::empty({D_}, DType::f32, ctx_), o = q.clone();
    std::copy_n(r + h * D_, D_, q.f32());
    ops::decode_attention(ctx_, {o, q, kk, vv, static_cast<int64_t>(keys.size()), 1, 1});
    std::copy_n(o.f32(), D_, y.f32() + h * D_);
  }
  return proj_.forward(y.reshape({1, C_}));
}

std::vector<int64_t> SparseSelfAttention::decode_keys(int64_t h, const float* r, int64_t row, const Tensor& k,
                                                      DecodeState& state) {
  const int64_t T = k.dim(0), L = H_ - R_, g = h / (H_ / G_);
  std::vector<int64_t> keys;
  if (!routed()) {  // block top-k over the complete blocks' key means (ops/sparse_attention.h)
    const int64_t bs = cfg_.block_size(), nb = (T + bs - 1) / bs;
    std::vector<int32_t> chosen;
    ops::block_topk_query_keys(chosen, r + h * D_, state.values.data() + g * nb * D_, row, D_, bs,
                               cfg_.topk_blocks());
    return std::vector<int64_t>(chosen.begin(), chosen.end());
  }
  if (h < L) {
    // A local head: keys u with row - w < u <= row (ops/attention.h).
    for (int64_t u = std::max<int64_t>(0, row + 1 - cfg_.window()); u <= row; ++u) keys.push_back(u);
    return keys;
  }
  // A routing head: its query and its key head's key, layer-normed, each to
  // its nearest centroid (ops/routed_attention.h, causal mode).
  const int64_t j = h - L;
  SY_CHECK((*centroids_)[j].initialized, "routed attention's centroids are not initialised: a model to decode "
                                          "comes from a checkpoint or a calibrated run");
  int64_t* cluster_of = state.counts.data() + j * T;                // each cached key's cluster, -1 dropped
  int64_t* q_count = state.counts.data() + R_ * T + j * K_;         // the window's queries per cluster
  int64_t* k_count = state.counts.data() + R_ * T + (R_ + j) * K_;  // and keys
  auto vec = [&](const float* p) {  // a (1, D) copy
    Tensor t = Tensor::empty({1, D_}, DType::f32, ctx_);
    std::copy(p, p + D_, t.f32());
    return t;
  };
  Tensor qn = Tensor::empty({1, D_}, DType::f32, ctx_), kn = qn.clone(), m = Tensor::empty({1}, DType::f32, ctx_);
  Tensor rs = m.clone();
  ops::layernorm_forward(ctx_, {qn, m, rs, vec(r + h * D_), Tensor(), Tensor()});
  ops::layernorm_forward(ctx_, {kn, m, rs, vec(r + C_ + g * D_), Tensor(), Tensor()});
  ops::ClusterParams cp;
  cp.mode = ops::ClusterMode::causal;  // (one token alone: no drops here, the window's below)
  ops::Clusters cl;
  ops::assign_clusters(ctx_, cl, qn, kn, (*centroids_)[j], cp);
  const int32_t cq = cl.queries.group.data<int32_t>()[0], ck = cl.keys.group.data<int32_t>()[0];
  // A cluster's capacity in a forward over the window of T tokens, slots
  // by position (assign_clusters' tokens choose, k 1; dropless: no limit).
  ops::TokensChooseParams tp;
  tp.capacity_factor = cfg_.capacity_factor();
  const int64_t C = cfg_.dropless() ? T : ops::tokens_choose_capacity(tp, T, K_);
  const bool q_kept = cq >= 0 && q_count[cq]++ < C, k_kept = ck >= 0 && k_count[ck]++ < C;
  cluster_of[row] = k_kept ? ck : -1;
  if (!q_kept) return keys;  // in no cluster: o = 0
  for (int64_t u = 0; u <= row; ++u)
    if (cluster_of[u] == cq) keys.push_back(u);
  if (keys.empty()) keys.push_back(row);  // no allowed key: itself
  return keys;
}

Tensor SparseSelfAttention::forward(const Tensor& x, int64_t B, int64_t T, const Tensor& positions) {
  B_ = B, T_ = T;
  const int64_t N = B * T;
  // RoPE on q and k (heads [0, H + G) of the projected row) before
  // clustering; then, with grouped key/value heads, the row widened to the
  // packed (N, 3C) of H heads each that every path below reads.
  Tensor qkv = qkv_.forward(x);
  positions_ = positions;
  if (opt_.rope) ops::rope_forward(ctx_, {qkv, positions_, T, H_ + G_, D_, opt_.rope_base});
  if (G_ < H_) {
    Tensor wide = Tensor::empty({N, 3 * C_}, DType::f32, ctx_);
    ops::expand_kv_heads(ctx_, wide, qkv, {H_, G_, D_});
    qkv = wide;
  }
  // Heads [h0, H) attend one at a time (the local heads run on the packed qkv
  // below): only they are split out, q_ row block j being head h0 + j.
  const int64_t h0 = first_head(), Hs = H_ - h0;
  q_ = Tensor::empty({Hs, N, D_}, DType::f32, ctx_);
  k_ = Tensor::empty({Hs, N, D_}, DType::f32, ctx_);
  v_ = Tensor::empty({Hs, N, D_}, DType::f32, ctx_);
  ops::split_heads(ctx_, q_, qkv, h0 * D_);
  ops::split_heads(ctx_, k_, qkv, C_ + h0 * D_);
  ops::split_heads(ctx_, v_, qkv, 2 * C_ + h0 * D_);
  o_ = Tensor::empty({Hs, N, D_}, DType::f32, ctx_);
  lse_ = Tensor::empty({Hs, N}, DType::f32, ctx_);
  keys_.assign(routed() ? 0 : H_ * B, ops::KeySets{});
  const int64_t L = H_ - R_;  // local heads (ROUTED); BLOCK_TOPK uses every head
  stats_ = SparseAttentionStats{};

  // Routing heads: normalised queries and keys of every routing head and
  // sequence, stacked as q_ holds them (ROUTED: q_ is the routing heads only).
  Tensor kn;
  if (routed() && R_ > 0) {
    const int64_t RN = R_ * N;
    qn_ = Tensor::empty({RN, D_}, DType::f32, ctx_);
    kn = Tensor::empty({RN, D_}, DType::f32, ctx_);
    qn_mean_ = Tensor::empty({RN}, DType::f32, ctx_);
    qn_rstd_ = Tensor::empty({RN}, DType::f32, ctx_);
    Tensor km = Tensor::empty({RN}, DType::f32, ctx_), kr = Tensor::empty({RN}, DType::f32, ctx_);
    ops::layernorm_forward(ctx_, {qn_, qn_mean_, qn_rstd_, q_.reshape({RN, D_}), Tensor(), Tensor()});
    ops::layernorm_forward(ctx_, {kn, km, kr, k_.reshape({RN, D_}), Tensor(), Tensor()});
    for (int64_t r = 0; r < R_; ++r) {
      ops::Centroids& c = (*centroids_)[r];
      if (c.initialized) continue;
      SY_CHECK(calibrating_ && !training_,
               "routed attention's centroids are not initialised: calibrate on a warm-up batch first "
               "(Transformer::calibrate), so that no batch the loss sees chooses them");
      ops::kmeans_init(ctx_, c, qn_.rows(r * N, (r + 1) * N), cfg_.kmeans_iters(), rng_);
      if (broadcaster_)
        for (Tensor* t : {&c.mu, &c.sum, &c.count}) broadcaster_(*t);
    }
  }
  calibrating_ = false;
  if (training_ && pending_.empty())
    for (int64_t r = 0; r < R_; ++r) pending_.emplace_back(K_, D_, ctx_);

  ops::ClusterParams cp;
  cp.mode = cfg_.assignment() == switchyard::AttentionConfig::BALANCED ? ops::ClusterMode::balanced
                                                                        : ops::ClusterMode::causal;
  cp.dropless = cfg_.dropless();
  cp.capacity_factor = cfg_.capacity_factor();
  double pairs = 0, sizes = 0, nonempty = 0, size_max = 0, commit = 0, assigned = 0;
  // The local heads: every sequence and head [0, L) in one call on the packed
  // qkv, into y's columns [0, L D); the other heads' columns are merged below.
  Tensor y = Tensor::empty({N, C_}, DType::f32, ctx_);
  if (routed() && L > 0) {
    const ops::AttentionShape s = local_shape();
    qkv_out_ = qkv;
    local_lse_ = Tensor::empty({B, H_, T}, DType::f32, ctx_);
    if (opt_.bf16) {  // the tensor-core kernels on bf16 qkv; y widened (the routing heads' columns follow)
      qkv16_ = Tensor::empty({B, T, 3 * C_}, DType::bf16, ctx_);
      y16_ = Tensor::empty({B, T, C_}, DType::bf16, ctx_);
      ops::to_bf16(ctx_, qkv16_, qkv.reshape({B, T, 3 * C_}));
      ops::attention_forward(ctx_, {y16_, local_lse_, qkv16_, s});
      ops::to_f32(ctx_, y, y16_.reshape({N, C_}));
    } else {
      Tensor y3 = y.reshape({B, T, C_});
      ops::attention_forward(ctx_, {y3, local_lse_, qkv.reshape({B, T, 3 * C_}), s});
    }
    const double w = static_cast<double>(std::min<int64_t>(s.window, T));
    pairs += static_cast<double>(B * L) * (T * w - 0.5 * w * (w - 1.0));  // sum_t min(t + 1, w)
  }
  // bf16 heads [h0, H): q, k, v rounded once, the packed tensor-core path per
  // head, o widened after the loop (o16_ is what backward reads).
  if (bf16_heads()) {
    q16_ = Tensor::empty({Hs, N, D_}, DType::bf16, ctx_);
    k16_ = Tensor::empty({Hs, N, D_}, DType::bf16, ctx_);
    v16_ = Tensor::empty({Hs, N, D_}, DType::bf16, ctx_);
    o16_ = Tensor::empty({Hs, N, D_}, DType::bf16, ctx_);
    ops::to_bf16(ctx_, q16_, q_);
    ops::to_bf16(ctx_, k16_, k_);
    ops::to_bf16(ctx_, v16_, v_);
  }
  const Tensor &qa = bf16_heads() ? q16_ : q_, &ka = bf16_heads() ? k16_ : k_, &va = bf16_heads() ? v16_ : v_;
  Tensor& oa = bf16_heads() ? o16_ : o_;
  if (routed() && R_ > 0) {
    // All routing heads of all sequences in one call each: assignment,
    // attention, and per centroid set (routing head r: stacked heads
    // [r B, (r+1) B)) the stats and the commitment sums. The pair count and
    // the sums stay on the device and come back with one wait.
    const int64_t RN = R_ * N;
    std::vector<const ops::Centroids*> sets;
    for (int64_t r = 0; r < R_; ++r) sets.push_back(&(*centroids_)[r]);
    ops::assign_clusters(ctx_, clusters_, qn_, kn, sets, R_ * B, cp);
    Tensor sums = Tensor::zeros({1 + R_}, DType::f64, ctx_);  // pairs, then routing head r's commitment sum
    Tensor o = oa.reshape({RN, D_}), lse = lse_.reshape({RN});
    ops::routed_attention_forward(ctx_, {o, lse, routed_keys_, qa.reshape({RN, D_}), ka.reshape({RN, D_}),
                                         va.reshape({RN, D_}), clusters_, /*key_sets=*/false, sums.data<double>(),
                                         &routed_saved_});
    for (int64_t r = 0; r < R_; ++r) {
      const ops::HeadRange heads{r * B, B};
      if (training_ && !replay_) ops::accumulate_cluster_stats(ctx_, pending_[r], qn_, kn, clusters_, heads);
      if (cp.mode == ops::ClusterMode::causal)
        assigned += static_cast<double>(
            ops::commitment_sums(ctx_, qn_, clusters_, *sets[r], sums.data<double>() + 1 + r, heads).count);
    }
    for (int32_t n : clusters_.queries.host_count()) {
      if (n > 0) sizes += n, ++nonempty;
      size_max = std::max<double>(size_max, n);
    }
    // The one wait, for ctx_'s stream alone (a replayed forward runs while
    // the gradient reducer's collectives are queued on its side stream).
    const std::vector<double> hs = sums.to(host_ctx_on(ctx_)).to_vector<double>();
    pairs += hs[0];
    if (cp.mode == ops::ClusterMode::causal)
      for (int64_t r = 0; r < R_; ++r) commit += hs[1 + r];
  }
  if (!routed())
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H_; ++h) {  // blocks chosen on the f32 q and k, whatever the attention reads
        const Tensor q = head(qa, h, b, T), k = head(ka, h, b, T), v = head(va, h, b, T);
        Tensor o = head(oa, h, b, T);
        Tensor lse = lse_.rows(h, h + 1).reshape({N}).rows(b * T, (b + 1) * T);
        ops::KeySets& ks = keys_[h * B + b];
        ks = ops::block_topk_keysets(ctx_, head(q_, h, b, T), head(k_, h, b, T), cfg_.block_size(),
                                     cfg_.topk_blocks());
        ops::sparse_attention_forward(ctx_, {o, lse, q, k, v, ks});
        pairs += static_cast<double>(ks.pairs());
      }
  stats_.pair_fraction = pairs / (B * H_ * 0.5 * T * (T + 1.0));
  stats_.cluster_size_mean = nonempty > 0 ? sizes / nonempty : 0;
  stats_.cluster_size_max = size_max;
  stats_.commitment_loss = assigned > 0 ? cfg_.commitment_coef() * commit / assigned : 0;
  commit_count_ = assigned;
  flops_ = 2.0 * N * C_ * static_cast<double>(qkv_width() + C_) + 4.0 * pairs * D_;
  if (bf16_heads()) ops::to_f32(ctx_, o_, o16_);
  if (Hs > 0) ops::merge_heads(ctx_, y, o_, h0 * D_);
  y_ = y;
  return proj_.forward(y);
}

void SparseSelfAttention::release() {
  qkv_.release();
  proj_.release();
  for (Tensor* t : {&positions_, &q_, &k_, &v_, &o_, &lse_, &qkv_out_, &y_, &local_lse_, &qkv16_, &y16_, &q16_,
                    &k16_, &v16_, &o16_, &qn_, &qn_mean_, &qn_rstd_})
    *t = Tensor();
  keys_.clear();
  routed_keys_ = ops::KeySets{};
  routed_saved_ = ops::RoutedSaved{};
  clusters_ = ops::Clusters{};
}

bool SparseSelfAttention::needs_calibration() const {
  for (const ops::Centroids& c : *centroids_)
    if (!c.initialized) return true;
  return false;
}

double SparseSelfAttention::update_centroids() {
  if (pending_.empty()) return 0;
  double drift = 0;
  for (int64_t r = 0; r < R_; ++r) {
    if (reducer_) {
      reducer_(pending_[r].sum);
      reducer_(pending_[r].count);
    }
    drift += ops::ema_update(ctx_, (*centroids_)[r], pending_[r], cfg_.ema_decay());
  }
  pending_.clear();
  stats_.centroid_drift = R_ > 0 ? drift / R_ : 0;
  return stats_.centroid_drift;
}

Tensor SparseSelfAttention::backward(const Tensor& dy) {
  const int64_t N = B_ * T_, L = H_ - R_, h0 = first_head(), Hs = H_ - h0;
  const Tensor dyatt = proj_.backward(dy);
  Tensor dout = Tensor::empty({Hs, N, D_}, DType::f32, ctx_);
  ops::split_heads(ctx_, dout, dyatt, h0 * D_);
  Tensor dq = Tensor::zeros({Hs, N, D_}, DType::f32, ctx_);
  Tensor dk = Tensor::zeros({Hs, N, D_}, DType::f32, ctx_);
  Tensor dv = Tensor::zeros({Hs, N, D_}, DType::f32, ctx_);
  // bf16 heads [h0, H): dout rounded, gradients in bf16 from zero, widened after the loop.
  Tensor dout16, dq16, dk16, dv16;
  if (bf16_heads()) {
    dout16 = Tensor::empty({Hs, N, D_}, DType::bf16, ctx_);
    ops::to_bf16(ctx_, dout16, dout);
    dq16 = Tensor::zeros({Hs, N, D_}, DType::bf16, ctx_);
    dk16 = Tensor::zeros({Hs, N, D_}, DType::bf16, ctx_);
    dv16 = Tensor::zeros({Hs, N, D_}, DType::bf16, ctx_);
  }
  const bool b16 = bf16_heads();
  Tensor &dqa = b16 ? dq16 : dq, &dka = b16 ? dk16 : dk, &dva = b16 ? dv16 : dv;
  const Tensor &douta = b16 ? dout16 : dout, &oa = b16 ? o16_ : o_, &qa = b16 ? q16_ : q_, &ka = b16 ? k16_ : k_,
               &va = b16 ? v16_ : v_;
  if (routed() && R_ > 0) {  // the routing heads, stacked as the forward ran them
    const int64_t RN = R_ * N;
    Tensor dqr = dqa.reshape({RN, D_}), dkr = dka.reshape({RN, D_}), dvr = dva.reshape({RN, D_});
    ops::routed_attention_backward(ctx_, {dqr, dkr, dvr, douta.reshape({RN, D_}), oa.reshape({RN, D_}),
                                          lse_.reshape({RN}), qa.reshape({RN, D_}), ka.reshape({RN, D_}),
                                          va.reshape({RN, D_}), routed_keys_, clusters_, &routed_saved_});
    routed_saved_.state.reset();  // (its device memory back before the rest of the step)
  }
  if (!routed())
    for (int64_t b = 0; b < B_; ++b)
      for (int64_t h = 0; h < H_; ++h) {
        Tensor dqh = head(dqa, h, b, T_), dkh = head(dka, h, b, T_), dvh = head(dva, h, b, T_);
        const Tensor lse = lse_.rows(h, h + 1).reshape({N}).rows(b * T_, (b + 1) * T_);
        ops::sparse_attention_backward(ctx_, {dqh, dkh, dvh, head(douta, h, b, T_), head(oa, h, b, T_), lse,
                                              head(qa, h, b, T_), head(ka, h, b, T_), head(va, h, b, T_),
                                              keys_[h * B_ + b]});
      }
  if (b16) {  // dq, dk, dv are still zero: the widened gradients replace them
    ops::to_f32(ctx_, dq, dq16);
    ops::to_f32(ctx_, dk, dk16);
    ops::to_f32(ctx_, dv, dv16);
  }
  // Commitment loss beta * mean((qn - sg(mu))^2) -> qn -> q (through the
  // parameter-free layer norm), every routing head at once.
  if (cfg_.commitment_coef() > 0 && commit_count_ > 0 && R_ > 0) {
    const int64_t RN = R_ * N;
    const float scale = static_cast<float>(2.0 * cfg_.commitment_coef() / (commit_count_ * D_));
    Tensor dqn = Tensor::zeros({RN, D_}, DType::f32, ctx_);
    for (int64_t r = 0; r < R_; ++r)
      ops::commitment_backward(ctx_, dqn, qn_, clusters_, (*centroids_)[r], scale, {r * B_, B_});
    Tensor dlq = Tensor::zeros({RN, D_}, DType::f32, ctx_), dqr = dq.reshape({RN, D_});
    ops::layernorm_backward(ctx_, {dlq, nullptr, nullptr, dqn, q_.reshape({RN, D_}), Tensor(), qn_mean_, qn_rstd_});
    ops::add_into(ctx_, dqr, dlq);
  }
  // Heads [h0, H) merged into their columns; the local heads' columns start at
  // zero and their gradients add onto them.
  Tensor dqkv = h0 > 0 ? Tensor::zeros({N, 3 * C_}, DType::f32, ctx_) : Tensor::empty({N, 3 * C_}, DType::f32, ctx_);
  if (Hs > 0) {
    ops::merge_heads(ctx_, dqkv, dq, h0 * D_);
    ops::merge_heads(ctx_, dqkv, dk, C_ + h0 * D_);
    ops::merge_heads(ctx_, dqkv, dv, 2 * C_ + h0 * D_);
  }
  if (routed() && L > 0) {
    Tensor dqkv3 = dqkv.reshape({B_, T_, 3 * C_});
    if (opt_.bf16) {  // from zero in bf16, then added onto the local heads' (zero) columns
      Tensor d16 = Tensor::empty({B_, T_, C_}, DType::bf16, ctx_), g16 = Tensor::zeros(qkv16_.shape(), DType::bf16, ctx_);
      ops::to_bf16(ctx_, d16, dyatt.reshape({B_, T_, C_}));
      ops::attention_backward(ctx_, {g16, d16, qkv16_, y16_, local_lse_, local_shape()});
      Tensor g = Tensor::empty(dqkv3.shape(), DType::f32, ctx_);
      ops::to_f32(ctx_, g, g16);
      ops::add_into(ctx_, dqkv3, g);
    } else {
      ops::attention_backward(ctx_, {dqkv3, dyatt.reshape({B_, T_, C_}), qkv_out_.reshape({B_, T_, 3 * C_}),
                                     y_.reshape({B_, T_, C_}), local_lse_, local_shape()});
    }
  }
  // The widening's backward (a shared head's gradient the sum of its query
  // heads'), then RoPE's, as the forward ran them.
  if (G_ < H_) {
    Tensor narrow = Tensor::empty({N, qkv_width()}, DType::f32, ctx_);
    ops::reduce_kv_heads(ctx_, narrow, dqkv, {H_, G_, D_});
    dqkv = narrow;
  }
  if (opt_.rope) ops::rope_backward(ctx_, {dqkv, positions_, T_, H_ + G_, D_, opt_.rope_base});
  return qkv_.backward(dqkv);
}

}  // namespace sy
