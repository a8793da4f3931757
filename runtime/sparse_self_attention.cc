#include "runtime/sparse_self_attention.h"

#include <algorithm>
#include <cmath>

#include "ops/layernorm.h"

namespace sy {

int64_t cluster_count(const switchyard::AttentionConfig& a, int64_t seq_len) {
  if (a.num_clusters() > 0) return a.num_clusters();
  return std::max<int64_t>(1, std::llround(std::sqrt(static_cast<double>(seq_len))));
}

AttentionPairs attention_pairs(const switchyard::AttentionConfig& a, int64_t n, int64_t n_heads) {
  const double dense = 0.5 * n * (n + 1.0);
  auto window_pairs = [&](double w) {
    w = std::min<double>(w, n);
    return n * w - 0.5 * w * (w - 1.0);  // sum_t min(t + 1, w)
  };
  double per_head_sum = 0;
  if (a.kind() == switchyard::AttentionConfig::ROUTED) {
    const double k = static_cast<double>(cluster_count(a, n)), S = n / k;
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

SparseSelfAttention::SparseSelfAttention(ParamStore& ps, const std::string& name, int64_t C, int64_t H,
                                         const SparseAttentionSpec& spec, Rng& rng, float std,
                                         float out_std)
    : cfg_(spec.cfg),
      qkv_(ps, name + ".qkv", C, 3 * C, rng, std),
      proj_(ps, name + ".proj", C, C, rng, out_std),
      C_(C), H_(H), D_(C / H),
      R_(routed() ? spec.cfg.num_routing_heads() : 0),
      K_(cluster_count(spec.cfg, spec.seq_len)),
      rng_(spec.seed) {
  if (spec.shared && routed()) {
    centroids_ = spec.shared;
  } else {
    own_.assign(R_, ops::Centroids(K_, D_));
    centroids_ = &own_;
  }
}

double SparseSelfAttention::flops(int64_t B, int64_t T) const {
  return 2.0 * B * T * (4.0 * C_ * C_) + 2.0 * B * T * T * C_;
}

Tensor SparseSelfAttention::forward(const Tensor& x, int64_t B, int64_t T) {
  B_ = B, T_ = T;
  const int64_t N = B * T, C3 = 3 * C_;
  qkv_out_ = qkv_.forward(x);
  y_ = Tensor({N, C_});
  lse_.assign(B * H_ * T, 0.f);
  keys_.assign(B * H_, ops::KeySets{});
  const int64_t L = H_ - R_;  // local heads (ROUTED); BLOCK_TOPK uses every head
  stats_ = SparseAttentionStats{};

  // Routing heads: normalised queries and keys of the whole batch.
  std::vector<Tensor> kn(R_);
  qn_.assign(R_, Tensor());
  qn_mean_.assign(R_, Tensor());
  qn_rstd_.assign(R_, Tensor());
  cluster_of_.assign(R_, std::vector<int32_t>(N, -1));
  for (int64_t r = 0; r < R_; ++r) {
    const int64_t h = L + r;
    Tensor q({N, D_}), k({N, D_});
    for (int64_t i = 0; i < N; ++i) {
      std::copy_n(qkv_out_.f32() + i * C3 + h * D_, D_, q.f32() + i * D_);
      std::copy_n(qkv_out_.f32() + i * C3 + C_ + h * D_, D_, k.f32() + i * D_);
    }
    qn_[r] = Tensor({N, D_});
    kn[r] = Tensor({N, D_});
    qn_mean_[r] = Tensor({N});
    qn_rstd_[r] = Tensor({N});
    Tensor km({N}), kr({N});
    ops::layernorm_forward(qn_[r], qn_mean_[r], qn_rstd_[r], q, Tensor(), Tensor());
    ops::layernorm_forward(kn[r], km, kr, k, Tensor(), Tensor());
    ops::Centroids& c = (*centroids_)[r];
    if (!c.initialized) {
      SY_CHECK(training_, "routed attention evaluated before its centroids were initialised by training");
      ops::kmeans_init(c, qn_[r].f32(), N, cfg_.kmeans_iters(), rng_);
    }
  }

  ops::ClusterParams cp;
  cp.mode = cfg_.assignment() == switchyard::AttentionConfig::BALANCED ? ops::ClusterMode::balanced
                                                                        : ops::ClusterMode::causal;
  cp.dropless = cfg_.dropless();
  cp.capacity_factor = cfg_.capacity_factor();
  const ops::KeySets local = routed() ? ops::local_keysets(T, cfg_.window()) : ops::KeySets{};
  std::vector<ops::ClusterStats> cstats(R_);
  double pairs = 0, sizes = 0, nonempty = 0, size_max = 0, commit = 0, assigned = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H_; ++h) {
      const float* base = qkv_out_.f32() + b * T * C3 + h * D_;
      ops::HeadQKV hv{base, base + C_, base + 2 * C_, C3, T, D_};
      float* o = y_.f32() + b * T * C_ + h * D_;
      float* lse = lse_.data() + (b * H_ + h) * T;
      ops::KeySets& ks = keys_[b * H_ + h];
      if (!routed()) {
        ks = ops::block_topk_keysets(hv, cfg_.block_size(), cfg_.topk_blocks());
        ops::sparse_attention_forward(o, C_, lse, hv, ks);
      } else if (h < L) {
        ks = local;
        ops::sparse_attention_forward(o, C_, lse, hv, ks);
      } else {
        const int64_t r = h - L;
        const float* qn = qn_[r].f32() + b * T * D_;
        const float* kn_b = kn[r].f32() + b * T * D_;
        ops::Clusters cl = ops::assign_clusters(qn, kn_b, D_, T, (*centroids_)[r], cp);
        ops::routed_attention_forward(o, C_, lse, ks, hv, cl);
        if (training_) ops::accumulate_cluster_stats(cstats[r], qn, kn_b, D_, D_, cl);
        const ops::Centroids& c = (*centroids_)[r];
        for (int64_t k = 0; k < cl.num(); ++k) {
          const double n = static_cast<double>(cl.queries[k].size());
          if (n > 0) sizes += n, ++nonempty;
          size_max = std::max(size_max, n);
          if (cp.mode == ops::ClusterMode::causal)
            for (int32_t t : cl.queries[k]) {
              cluster_of_[r][b * T + t] = static_cast<int32_t>(k);
              double d2 = 0;
              for (int64_t i = 0; i < D_; ++i) {
                const double e = qn[t * D_ + i] - c.mu[k * D_ + i];
                d2 += e * e;
              }
              commit += d2 / D_;
              ++assigned;
            }
        }
      }
      pairs += static_cast<double>(ks.pairs());
    }
  stats_.pair_fraction = pairs / (B * H_ * 0.5 * T * (T + 1.0));
  stats_.cluster_size_mean = nonempty > 0 ? sizes / nonempty : 0;
  stats_.cluster_size_max = size_max;
  stats_.commitment_loss = assigned > 0 ? cfg_.commitment_coef() * commit / assigned : 0;
  commit_count_ = assigned;
  if (training_) {
    double drift = 0;
    for (int64_t r = 0; r < R_; ++r) {
      ops::Centroids& c = (*centroids_)[r];
      cstats[r].sum.resize(K_ * D_, 0.f);
      cstats[r].count.resize(K_, 0.f);
      if (reducer_) {
        reducer_(cstats[r].sum);
        reducer_(cstats[r].count);
      }
      drift += ops::ema_update(c, cstats[r], cfg_.ema_decay());
    }
    stats_.centroid_drift = R_ > 0 ? drift / R_ : 0;
  }
  flops_ = 2.0 * N * C_ * 4.0 * C_ + 4.0 * pairs * D_;
  return proj_.forward(y_);
}

Tensor SparseSelfAttention::backward(const Tensor& dy) {
  const int64_t N = B_ * T_, C3 = 3 * C_, L = H_ - R_;
  Tensor dyatt = proj_.backward(dy);
  Tensor dqkv({N, C3});
  for (int64_t b = 0; b < B_; ++b)
    for (int64_t h = 0; h < H_; ++h) {
      const float* base = qkv_out_.f32() + b * T_ * C3 + h * D_;
      ops::HeadQKV hv{base, base + C_, base + 2 * C_, C3, T_, D_};
      float* g = dqkv.f32() + b * T_ * C3 + h * D_;
      ops::sparse_attention_backward({g, g + C_, g + 2 * C_, C3}, dyatt.f32() + b * T_ * C_ + h * D_,
                                     y_.f32() + b * T_ * C_ + h * D_, C_,
                                     lse_.data() + (b * H_ + h) * T_, hv, keys_[b * H_ + h]);
    }
  // Commitment loss beta * mean((qn - sg(mu))^2) -> qn -> q (through the
  // parameter-free layer norm).
  if (cfg_.commitment_coef() > 0 && commit_count_ > 0)
    for (int64_t r = 0; r < R_; ++r) {
      const ops::Centroids& c = (*centroids_)[r];
      Tensor dqn({N, D_}), dq({N, D_});
      const float k = static_cast<float>(2.0 * cfg_.commitment_coef() / (commit_count_ * D_));
      for (int64_t i = 0; i < N; ++i) {
        const int32_t cl = cluster_of_[r][i];
        if (cl < 0) continue;
        for (int64_t d = 0; d < D_; ++d)
          dqn.f32()[i * D_ + d] = k * (qn_[r].f32()[i * D_ + d] - c.mu[cl * D_ + d]);
      }
      // The layer norm's input is the head's query slice; its mean/rstd were saved.
      Tensor q({N, D_});
      for (int64_t i = 0; i < N; ++i) std::copy_n(qkv_out_.f32() + i * C3 + (L + r) * D_, D_, q.f32() + i * D_);
      ops::layernorm_backward(dq, nullptr, nullptr, dqn, q, Tensor(), qn_mean_[r], qn_rstd_[r]);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t d = 0; d < D_; ++d) dqkv.f32()[i * C3 + (L + r) * D_ + d] += dq.f32()[i * D_ + d];
    }
  return qkv_.backward(dqkv);
}

}  // namespace sy
