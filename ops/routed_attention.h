// Routed attention (Routing Transformer, Roy et al. 2021, arXiv 2003.05997):
// one head of one sequence attends inside content clusters.
//
//   qn = LN(q), kn = LN(k)        (layer norm without scale or bias; |x| = sqrt(D))
//   score_tc = xn_t . mu_c        centroids mu (K, D), |mu_c| = sqrt(D)
//   causal:   each query joins argmax_c score(qn_t) and each key joins
//             argmax_c score(kn_u) (tokens choose, slots by position) - nothing
//             about t depends on tokens after t, so generation can use it.
//             (The public implementations share one list, with keys = queries;
//             here keys keep their own projection, so the list of a key must
//             come from its key: membership then follows the q.k the attention
//             trains. With one list chosen by qn, nothing teaches a key token
//             to join the cluster of the queries that need it.)
//   balanced: each centroid takes its top S = ceil(T/K) queries and, separately,
//             keys (groups choose; the paper's) - membership depends on later
//             tokens: training and encoders only
//   Inside cluster c, query t attends keys u of c with u <= t (causal mask by
//   original position). A pair (t, u) that shares several clusters is counted
//   in the first of them only, so the merge below is attention over the union.
//   The per-cluster outputs o_c, lse_c of a query are merged exactly:
//       lse = log sum_c exp(lse_c),   o = sum_c exp(lse_c - lse) o_c
//   A query in some cluster but with no allowed key attends to itself; a query
//   in no cluster gets o = 0.
// Backward goes through q, k, v (ops/sparse_attention.h over the union key
// sets saved here), not through the assignment.
//
// Centroids: k-means on the first batch, then an exponential moving average of
// per-cluster counts and sums of the assigned normalised vectors,
//   n_c <- d n_c + (1-d) count_c,  s_c <- d s_c + (1-d) sum_c,
//   mu_c = sqrt(D) s_c / |s_c|    (clusters never seen keep their centroid)
// with counts and sums summed over data-parallel ranks before the update.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/sparse_attention.h"
#include "core/rng.h"

namespace sy::ops {

enum class ClusterMode { causal, balanced };

struct ClusterParams {
  ClusterMode mode = ClusterMode::causal;
  bool dropless = true;          // causal: capacity grows to fit
  float capacity_factor = 2.0f;  // causal, not dropless: C = ceil(cf * T / K)
};

// Members of each cluster, positions ascending.
struct Clusters {
  std::vector<std::vector<int32_t>> queries, keys;  // (K) lists
  int64_t num() const { return static_cast<int64_t>(queries.size()); }
};

struct Centroids {
  int64_t K = 0, D = 0;
  std::vector<float> mu;      // (K, D), |mu_c| = sqrt(D)
  std::vector<float> sum;     // (K, D) EMA of sums
  std::vector<float> count;   // (K) EMA of counts
  bool initialized = false;
  Centroids() = default;
  Centroids(int64_t k, int64_t d) : K(k), D(d), mu(k * d), sum(k * d), count(k) {}
};

// Per-cluster counts and sums of assigned normalised vectors in one batch.
struct ClusterStats {
  std::vector<float> sum;    // (K, D)
  std::vector<float> count;  // (K)
};

// qn, kn: normalised rows (T, D), ld floats apart.
Clusters assign_clusters(const float* qn, const float* kn, int64_t ld, int64_t T,
                         const Centroids& c, const ClusterParams& p);

// Forward; fills o (rows ld_o apart), lse (T) and the union key sets for backward.
void routed_attention_forward(float* o, int64_t ld_o, float* lse, KeySets& keys, const HeadQKV& h,
                              const Clusters& cl);

// Adds the members' normalised vectors to stats (queries, and keys where the
// lists differ).
void accumulate_cluster_stats(ClusterStats& s, const float* qn, const float* kn, int64_t ld,
                              int64_t D, const Clusters& cl);

// Spherical k-means on n rows x (n, D): random distinct rows, then `iters`
// rounds of assign (argmax dot) and mean, each rescaled to norm sqrt(D).
void kmeans_init(Centroids& c, const float* x, int64_t n, int iters, Rng& rng);

// EMA update from (all-reduced) stats; returns the mean |mu_new - mu_old|.
float ema_update(Centroids& c, const ClusterStats& s, float decay);

}  // namespace sy::ops
