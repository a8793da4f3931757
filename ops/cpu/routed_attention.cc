#include "ops/routed_attention.h"

#include <algorithm>
#include <cmath>

#include "ops/routing.h"
#include "core/error.h"

namespace sy::ops {

namespace {

// scores (T, K) = xn . mu^T
std::vector<float> centroid_scores(const float* xn, int64_t ld, int64_t T, const Centroids& c) {
  std::vector<float> s(T * c.K, 0.f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < c.K; ++k) {
      float d = 0;
      for (int64_t i = 0; i < c.D; ++i) d += xn[t * ld + i] * c.mu[k * c.D + i];
      s[t * c.K + k] = d;
    }
  return s;
}

// Members of each group of a Route, in slot (= position) order.
std::vector<std::vector<int32_t>> members(const Route& r) {
  std::vector<std::vector<int32_t>> m(r.num_groups);
  for (int64_t g = 0; g < r.num_groups; ++g) m[g].resize(r.count[g]);
  for (int64_t a = 0; a < r.num_items * r.k; ++a)
    if (r.slot[a] >= 0) m[r.group[a]][r.slot[a]] = static_cast<int32_t>(a / r.k);
  return m;
}

void rescale(float* v, int64_t D) {
  double n = 0;
  for (int64_t i = 0; i < D; ++i) n += double(v[i]) * v[i];
  if (n <= 0) return;
  const float s = static_cast<float>(std::sqrt(double(D) / n));
  for (int64_t i = 0; i < D; ++i) v[i] *= s;
}

}  // namespace

Clusters assign_clusters(const float* qn, const float* kn, int64_t ld, int64_t T,
                         const Centroids& c, const ClusterParams& p) {
  SY_CHECK(c.K >= 1, "routed attention needs at least one centroid");
  Clusters cl;
  const std::vector<float> qs = centroid_scores(qn, ld, T, c);
  if (p.mode == ClusterMode::causal) {
    TokensChooseParams tp;
    tp.k = 1;
    tp.dropless = p.dropless;
    tp.capacity_factor = p.capacity_factor;
    // Queries by their normalised query, keys by their normalised key: the
    // vectors whose dot product the attention trains are the ones that decide
    // membership, so a useful (query, key) pair is pulled into one cluster.
    // Each token's choice depends on that token alone: causal.
    cl.queries = members(tokens_choose(qs, T, c.K, tp));
    cl.keys = members(tokens_choose(centroid_scores(kn, ld, T, c), T, c.K, tp));
  } else {
    const int64_t S = (T + c.K - 1) / c.K;
    cl.queries = members(groups_choose(qs, T, c.K, S));
    cl.keys = members(groups_choose(centroid_scores(kn, ld, T, c), T, c.K, S));
  }
  return cl;
}

void routed_attention_forward(float* o, int64_t ld_o, float* lse, KeySets& keys, const HeadQKV& h,
                              const Clusters& cl) {
  const int64_t T = h.T, D = h.D, K = cl.num();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  // Membership bitmaps: the first cluster two tokens share decides where a pair counts.
  const int64_t W = (K + 63) / 64;
  std::vector<uint64_t> qm(T * W, 0), km(T * W, 0);
  for (int64_t c = 0; c < K; ++c) {
    for (int32_t t : cl.queries[c]) qm[t * W + c / 64] |= 1ull << (c % 64);
    for (int32_t u : cl.keys[c]) km[u * W + c / 64] |= 1ull << (c % 64);
  }
  auto first_common = [&](int64_t t, int64_t u) {
    for (int64_t w = 0; w < W; ++w)
      if (uint64_t x = qm[t * W + w] & km[u * W + w]) return w * 64 + __builtin_ctzll(x);
    return int64_t{-1};
  };
  // Running log-sum-exp merge per query: m (max), l (sum of exp), acc (weighted v).
  std::vector<float> m(T, -INFINITY), l(T, 0.f), acc(T * D, 0.f);
  std::vector<std::vector<int32_t>> union_keys(T);
  std::vector<float> s;
  for (int64_t c = 0; c < K; ++c) {
    const auto& kc = cl.keys[c];
    for (int32_t t : cl.queries[c]) {
      s.clear();
      float mc = -INFINITY;
      size_t first = union_keys[t].size();
      for (int32_t u : kc) {
        if (u > t) break;  // keys are in position order
        if (first_common(t, u) != c) continue;
        float d = 0;
        for (int64_t i = 0; i < D; ++i) d += h.q[t * h.ld + i] * h.k[u * h.ld + i];
        s.push_back(d * scale);
        mc = std::max(mc, s.back());
        union_keys[t].push_back(u);
      }
      if (s.empty()) continue;
      // Partial (mc, lc, acc_c) of cluster c, merged into the running one.
      const float mn = std::max(m[t], mc), a_old = std::exp(m[t] - mn), a_new = std::exp(mc - mn);
      float* at = acc.data() + t * D;
      for (int64_t i = 0; i < D; ++i) at[i] *= a_old;
      l[t] *= a_old;
      for (size_t j = 0; j < s.size(); ++j) {
        const float e = std::exp(s[j] - mc) * a_new;
        l[t] += e;
        const float* v = h.v + union_keys[t][first + j] * h.ld;
        for (int64_t i = 0; i < D; ++i) at[i] += e * v[i];
      }
      m[t] = mn;
    }
  }
  keys = KeySets{};
  for (int64_t t = 0; t < T; ++t) {
    float* ot = o + t * ld_o;
    bool in_cluster = false;
    for (int64_t w = 0; w < W; ++w) in_cluster |= qm[t * W + w] != 0;
    if (union_keys[t].empty() && in_cluster) {
      // No allowed key: attend to itself.
      union_keys[t].push_back(static_cast<int32_t>(t));
      float d = 0;
      for (int64_t i = 0; i < D; ++i) d += h.q[t * h.ld + i] * h.k[t * h.ld + i];
      m[t] = d * scale;
      l[t] = 1.f;
      std::copy_n(h.v + t * h.ld, D, acc.data() + t * D);
    }
    if (union_keys[t].empty()) {
      std::fill(ot, ot + D, 0.f);
      lse[t] = -INFINITY;
    } else {
      for (int64_t i = 0; i < D; ++i) ot[i] = acc[t * D + i] / l[t];
      lse[t] = m[t] + std::log(l[t]);
    }
    std::sort(union_keys[t].begin(), union_keys[t].end());
    keys.add_query(union_keys[t]);
  }
}

void accumulate_cluster_stats(ClusterStats& s, const float* qn, const float* kn, int64_t ld,
                              int64_t D, const Clusters& cl) {
  const int64_t K = cl.num();
  s.sum.resize(K * D, 0.f);
  s.count.resize(K, 0.f);
  auto add = [&](int64_t c, const float* x) {
    for (int64_t i = 0; i < D; ++i) s.sum[c * D + i] += x[i];
    s.count[c] += 1.f;
  };
  for (int64_t c = 0; c < K; ++c) {
    for (int32_t t : cl.queries[c]) add(c, qn + t * ld);
    if (cl.keys[c] != cl.queries[c])
      for (int32_t u : cl.keys[c]) add(c, kn + u * ld);
  }
}

void kmeans_init(Centroids& c, const float* x, int64_t n, int iters, Rng& rng) {
  SY_CHECK(n >= 1, "k-means on an empty batch");
  const int64_t K = c.K, D = c.D;
  // Distinct random rows (with repetition only when n < K).
  std::vector<int64_t> pick(n);
  for (int64_t i = 0; i < n; ++i) pick[i] = i;
  for (int64_t i = 0; i < std::min(n, K); ++i) std::swap(pick[i], pick[i + rng.below(n - i)]);
  for (int64_t k = 0; k < K; ++k) {
    std::copy_n(x + pick[k % n] * D, D, c.mu.data() + k * D);
    rescale(c.mu.data() + k * D, D);
  }
  std::vector<float> sum(K * D);
  std::vector<int64_t> cnt(K);
  for (int it = 0; it < iters; ++it) {
    std::fill(sum.begin(), sum.end(), 0.f);
    std::fill(cnt.begin(), cnt.end(), 0);
    for (int64_t i = 0; i < n; ++i) {
      int64_t best = 0;
      float bd = -INFINITY;
      for (int64_t k = 0; k < K; ++k) {
        float d = 0;
        for (int64_t j = 0; j < D; ++j) d += x[i * D + j] * c.mu[k * D + j];
        if (d > bd) bd = d, best = k;
      }
      for (int64_t j = 0; j < D; ++j) sum[best * D + j] += x[i * D + j];
      ++cnt[best];
    }
    for (int64_t k = 0; k < K; ++k)
      if (cnt[k] > 0) {
        std::copy_n(sum.data() + k * D, D, c.mu.data() + k * D);
        rescale(c.mu.data() + k * D, D);
      }
  }
  // The EMA starts from the k-means solution: one unit of count per centroid.
  c.sum = c.mu;
  std::fill(c.count.begin(), c.count.end(), 1.f);
  c.initialized = true;
}

float ema_update(Centroids& c, const ClusterStats& s, float decay) {
  const int64_t K = c.K, D = c.D;
  double drift = 0;
  std::vector<float> old(D);
  for (int64_t k = 0; k < K; ++k) {
    c.count[k] = decay * c.count[k] + (1.f - decay) * s.count[k];
    for (int64_t i = 0; i < D; ++i) c.sum[k * D + i] = decay * c.sum[k * D + i] + (1.f - decay) * s.sum[k * D + i];
    std::copy_n(c.mu.data() + k * D, D, old.data());
    std::copy_n(c.sum.data() + k * D, D, c.mu.data() + k * D);
    rescale(c.mu.data() + k * D, D);
    double d2 = 0;
    for (int64_t i = 0; i < D; ++i) d2 += double(c.mu[k * D + i] - old[i]) * (c.mu[k * D + i] - old[i]);
    drift += std::sqrt(d2);
  }
  return static_cast<float>(drift / std::max<int64_t>(1, K));
}

}  // namespace sy::ops
