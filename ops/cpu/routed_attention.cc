#include "ops/routed_attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "ops/elementwise.h"
#include "ops/routing.h"

namespace sy::ops::cpu {

// scores (T, K) = xn . mu^T, one GEMM (the CUDA path's cuBLAS call): the scalar
// triple loop it replaces was over 90% of a routed forward on the CPU. Only
// the order of the D additions changes, so ties between centroids may break
// differently in the last ulp; the tests' inputs keep gaps between scores.
void centroid_scores(Ctx&, Tensor& s, const Tensor& xn, const Centroids& c) {
  const int64_t T = xn.dim(0);
  if (T == 0 || c.K == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, c.K, c.D, 1.f, xn.f32(), c.D, c.mu.f32(), c.D, 0.f,
              s.f32(), c.K);
}

void nearest_clusters(Ctx& ctx, Route& r, const Tensor& xn, const std::vector<const Centroids*>& sets,
                      const TokensChooseParams& tp) {
  ops::tokens_choose(ctx, r, stacked_centroid_scores(ctx, xn, sets), tp);  // the op: its checks, then cpu::
}

namespace {

// Members of each group of a Route, in slot (= position) order.
std::vector<std::vector<int32_t>> members(const Route& r) {
  std::vector<std::vector<int32_t>> m(r.num_groups);
  const std::vector<int32_t> count = r.host_count();
  for (int64_t g = 0; g < r.num_groups; ++g) m[g].resize(count[g]);
  const int32_t* group = r.group.data<int32_t>();
  const int32_t* slot = r.slot.data<int32_t>();
  for (int64_t a = 0; a < r.assignments(); ++a)
    if (slot[a] >= 0) m[group[a]][slot[a]] = static_cast<int32_t>(a / r.k);
  return m;
}

// Cluster members as lists: queries[c], keys[c] in position order.
struct Members {
  std::vector<std::vector<int32_t>> queries, keys;
};

void rescale(float* v, int64_t D) {
  double n = 0;
  for (int64_t i = 0; i < D; ++i) n += double(v[i]) * v[i];
  if (n <= 0) return;
  const float s = static_cast<float>(std::sqrt(double(D) / n));
  for (int64_t i = 0; i < D; ++i) v[i] *= s;
}

}  // namespace

// bf16 tensors (CUDA's tensor-core path), as ops/cpu/attention.cc: the f32
// path on their values, results rounded to bf16 (gradients accumulate as
// bf16(g + gradient)); the GPU also rounds P and dS, so the two agree to
// class B.
void routed_attention_forward(Ctx& ctx, const RoutedAttentionArgs& args) {
  if (args.q.dtype() == DType::bf16) {
    const Tensor q = args.q.to(DType::f32), k = args.k.to(DType::f32), v = args.v.to(DType::f32);
    Tensor o = Tensor::empty(args.o.shape(), DType::f32, ctx);
    routed_attention_forward(ctx, {o, args.lse, args.keys, q, k, v, args.clusters, args.key_sets, args.pair_count});
    to_bf16(ctx, args.o, o);
    return;
  }
  const int64_t T = args.q.dim(0), D = args.q.dim(1);
  const Members cl{members(args.clusters.queries), members(args.clusters.keys)};
  const int64_t K = static_cast<int64_t>(cl.queries.size());
  const float* hq = args.q.f32();
  const float* hk = args.k.f32();
  const float* hv = args.v.f32();
  float* o = args.o.f32();
  float* lse = args.lse.f32();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  // Membership bitmaps: the first cluster two tokens share decides where a
  // pair counts. Bit c % Kh for cluster c (Kh per head): stacked heads never
  // share a cluster, so a token needs only its own head's bits.
  const int64_t Kh = args.clusters.per_head(), W = (Kh + 63) / 64;
  std::vector<uint64_t> qm(T * W, 0), km(T * W, 0);
  for (int64_t c = 0; c < K; ++c) {
    const int64_t b = c % Kh;
    for (int32_t t : cl.queries[c]) qm[t * W + b / 64] |= 1ull << (b % 64);
    for (int32_t u : cl.keys[c]) km[u * W + b / 64] |= 1ull << (b % 64);
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
        if (first_common(t, u) != c % Kh) continue;
        float d = 0;
        for (int64_t i = 0; i < D; ++i) d += hq[t * D + i] * hk[u * D + i];
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
        const float* v = hv + union_keys[t][first + j] * D;
        for (int64_t i = 0; i < D; ++i) at[i] += e * v[i];
      }
      m[t] = mn;
    }
  }
  KeySetsBuilder keys;
  for (int64_t t = 0; t < T; ++t) {
    float* ot = o + t * D;
    bool in_cluster = false;
    for (int64_t w = 0; w < W; ++w) in_cluster |= qm[t * W + w] != 0;
    if (union_keys[t].empty() && in_cluster) {
      // No allowed key: attend to itself.
      union_keys[t].push_back(static_cast<int32_t>(t));
      float d = 0;
      for (int64_t i = 0; i < D; ++i) d += hq[t * D + i] * hk[t * D + i];
      m[t] = d * scale;
      l[t] = 1.f;
      std::copy_n(hv + t * D, D, acc.data() + t * D);
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
  args.keys = keys.build(ctx);
  if (!args.key_sets && args.pair_count) *args.pair_count = static_cast<double>(args.keys.pairs());
}

// The gradient of attention over the union key sets the forward saved.
void routed_attention_backward(Ctx& ctx, const RoutedAttentionBackwardArgs& a) {
  SY_CHECK(a.keys.off.defined(), "routed_attention_backward: the CPU walks the forward's key sets, and these were "
                                 "only counted (a CUDA forward with key_sets = false)");
  // (bf16 tensors: the sparse backward's own emulation, the f32 path rounded)
  sparse_attention_backward(ctx, {a.dq, a.dk, a.dv, a.dout, a.o, a.lse, a.q, a.k, a.v, a.keys});
}

void accumulate_cluster_stats(Ctx&, ClusterStats& s, const Tensor& qn, const Tensor& kn, const Clusters& clusters,
                              HeadRange heads) {
  const Members cl{members(clusters.queries), members(clusters.keys)};
  const int64_t K = clusters.per_head(), D = qn.dim(1);
  float* sum = s.sum.f32();
  float* count = s.count.f32();
  auto add = [&](int64_t c, const float* x) {
    for (int64_t i = 0; i < D; ++i) sum[c * D + i] += x[i];
    count[c] += 1.f;
  };
  for (int64_t h = heads.first; h < heads.first + heads.count; ++h)
    for (int64_t c = 0; c < K; ++c) {
      const int64_t g = h * K + c;  // head h's cluster c
      for (int32_t t : cl.queries[g]) add(c, qn.f32() + t * D);
      if (cl.keys[g] != cl.queries[g])
        for (int32_t u : cl.keys[g]) add(c, kn.f32() + u * D);
    }
}

void kmeans_init(Ctx&, Centroids& c, const Tensor& xt, int iters, Rng& rng) {
  const int64_t K = c.K, D = c.D, n = xt.dim(0);
  const float* x = xt.f32();
  float* mu = c.mu.f32();
  // Distinct random rows (with repetition only when n < K).
  std::vector<int64_t> pick(n);
  for (int64_t i = 0; i < n; ++i) pick[i] = i;
  for (int64_t i = 0; i < std::min(n, K); ++i) std::swap(pick[i], pick[i + rng.below(n - i)]);
  for (int64_t k = 0; k < K; ++k) {
    std::copy_n(x + pick[k % n] * D, D, mu + k * D);
    rescale(mu + k * D, D);
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
        for (int64_t j = 0; j < D; ++j) d += x[i * D + j] * mu[k * D + j];
        if (d > bd) bd = d, best = k;
      }
      for (int64_t j = 0; j < D; ++j) sum[best * D + j] += x[i * D + j];
      ++cnt[best];
    }
    for (int64_t k = 0; k < K; ++k)
      if (cnt[k] > 0) {
        std::copy_n(sum.data() + k * D, D, mu + k * D);
        rescale(mu + k * D, D);
      }
  }
  // The EMA starts from the k-means solution: one unit of count per centroid.
  std::copy_n(mu, K * D, c.sum.f32());
  std::fill_n(c.count.f32(), K, 1.f);
  c.initialized = true;
}

float ema_update(Ctx&, Centroids& c, const ClusterStats& s, float decay) {
  const int64_t K = c.K, D = c.D;
  float* count = c.count.f32();
  float* csum = c.sum.f32();
  float* mu = c.mu.f32();
  const float* scount = s.count.f32();
  const float* ssum = s.sum.f32();
  double drift = 0;
  std::vector<float> old(D);
  for (int64_t k = 0; k < K; ++k) {
    count[k] = decay * count[k] + (1.f - decay) * scount[k];
    for (int64_t i = 0; i < D; ++i) csum[k * D + i] = decay * csum[k * D + i] + (1.f - decay) * ssum[k * D + i];
    std::copy_n(mu + k * D, D, old.data());
    std::copy_n(csum + k * D, D, mu + k * D);
    rescale(mu + k * D, D);
    double d2 = 0;
    for (int64_t i = 0; i < D; ++i) d2 += double(mu[k * D + i] - old[i]) * (mu[k * D + i] - old[i]);
    drift += std::sqrt(d2);
  }
  return static_cast<float>(drift / std::max<int64_t>(1, K));
}

// Stacked heads: the clusters of `heads` (groups [first K, (first + count) K)),
// cluster g's centroid row g % K.
CommitmentSums commitment_sums(Ctx&, const Tensor& qn, const Clusters& clusters, const Centroids& c, double* sq_slot,
                               HeadRange heads) {
  const std::vector<std::vector<int32_t>> queries = members(clusters.queries);
  const int64_t D = c.D, K = c.K;
  const float* mu = c.mu.f32();
  CommitmentSums s;
  for (int64_t k = heads.first * K; k < (heads.first + heads.count) * K; ++k)
    for (int32_t t : queries[k]) {
      double d2 = 0;
      for (int64_t i = 0; i < D; ++i) {
        const double e = qn.f32()[t * D + i] - mu[k % K * D + i];
        d2 += e * e;
      }
      s.sq += d2 / D;
      ++s.count;
    }
  if (sq_slot) {
    *sq_slot = s.sq;
    s.sq = NAN;
  }
  return s;
}

void commitment_backward(Ctx&, Tensor& dqn, const Tensor& qn, const Clusters& clusters, const Centroids& c, float scale,
                         HeadRange heads) {
  const std::vector<std::vector<int32_t>> queries = members(clusters.queries);
  const int64_t D = c.D, K = c.K;
  const float* mu = c.mu.f32();
  for (int64_t k = heads.first * K; k < (heads.first + heads.count) * K; ++k)
    for (int32_t t : queries[k])
      for (int64_t d = 0; d < D; ++d) dqn.f32()[t * D + d] += scale * (qn.f32()[t * D + d] - mu[k % K * D + d]);
}

}  // namespace sy::ops::cpu
