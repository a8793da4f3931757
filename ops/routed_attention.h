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
// Backward goes through q, k, v, not through the assignment: the gradient of
// attention over the union key sets (ops/sparse_attention.h), from the merged
// lse and o. The CPU reference runs the sparse backward over the key sets the
// forward saved; CUDA walks the same pairs cluster by cluster (recomputed
// from the clusters), partial dq, dk, dv summed per token in cluster order.
// Shapes: one head of one sequence, q, k, v, o (T, D) contiguous, lse (T);
// qn, kn the normalised q, k (T, D); centroids mu (K, D). Or several heads
// stacked (Clusters below): (heads T, D) and (heads T).
//
// Centroids: k-means on the first batch, then an exponential moving average of
// per-cluster counts and sums of the assigned normalised vectors,
//   n_c <- d n_c + (1-d) count_c,  s_c <- d s_c + (1-d) sum_c,
//   mu_c = sqrt(D) s_c / |s_c|    (clusters never seen keep their centroid)
// with counts and sums summed over data-parallel ranks before the update.
//
// Backends: every entry point runs on CUDA (ops/cuda/routed_attention.cu:
// scores by a cuBLAS GEMM, the routing core's tokens/groups choose, per-cluster
// sums in position order; the attention on the tiled varlen flash kernels,
// one segment per cluster, its keys then its queries, with positions and the
// first-shared rule in the kernels' mask and an LSE merge per token in
// cluster order (ops/cuda/routed_union_pack.h); head dims the kernels lack
// per cluster row (ops/cuda/routed_attention_rows.h); f32, and bf16 on the
// tiled path; no atomics).
// kmeans_init, once per run on the warm-up batch, runs the CPU reference on a
// host copy and writes the centroids back to the device.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/rng.h"
#include "ops/backend.h"
#include "ops/routing.h"
#include "ops/sparse_attention.h"

namespace sy::ops {

enum class ClusterMode { causal, balanced };

struct ClusterParams {
  ClusterMode mode = ClusterMode::causal;
  bool dropless = true;          // causal: capacity grows to fit
  float capacity_factor = 2.0f;  // causal, not dropless: C = ceil(cf * T / K)
};

// Cluster membership as two Routes over the T tokens (K groups): queries by
// their normalised query, keys by their normalised key. A cluster's members
// are its rows in the group-major buffer, in position order.
// Several heads at once (a layer's routing heads of every sequence, in one
// call each): `heads` heads of T tokens stacked, rows [s T, (s+1) T) of q, k,
// v, qn, kn being head s, and cluster c of head s is group s K + c of both
// routes (K = per_head()). No cluster spans two heads, so the attention over
// the clusters is each head's own, and the causal rule compares row indices,
// which order the tokens of one head. Fewer, larger launches, and one
// read-back of the routes for all heads instead of two per head.
struct Clusters {
  Route queries, keys;
  int64_t heads = 1;
  int64_t num() const { return queries.num_groups; }  // all heads' clusters
  int64_t per_head() const { return heads > 0 ? num() / heads : 0; }
  int64_t head_len() const { return heads > 0 ? queries.num_items / heads : 0; }
};

// Heads [first, first + count) of stacked clusters (count < 0: all): the
// heads of one centroid set, for the ops that read or update centroids.
struct HeadRange {
  int64_t first = 0, count = -1;
};

struct Centroids {
  int64_t K = 0, D = 0;
  Tensor mu;     // (K, D), |mu_c| = sqrt(D)
  Tensor sum;    // (K, D) EMA of sums
  Tensor count;  // (K) EMA of counts
  bool initialized = false;
  Centroids() = default;
  Centroids(int64_t k, int64_t d, Ctx& ctx);
};

// Per-cluster counts and sums of assigned normalised vectors in one batch.
struct ClusterStats {
  Tensor sum;    // (K, D)
  Tensor count;  // (K)
  ClusterStats() = default;
  ClusterStats(int64_t k, int64_t d, Ctx& ctx);  // zeros
};

// What a forward keeps for its backward where the backend has something to
// keep (CUDA's tiled path: the packing of the clusters into segments, the
// packed q, k, v and the pair counts, which backward would otherwise build
// again), tied to the forward's q, k, v and clusters. Callers hand it from
// forward to backward unread; backward without it (or with one of other
// inputs) builds what it needs. It holds device memory until dropped.
struct RoutedSaved {
  std::shared_ptr<const void> state;
};

struct RoutedAttentionArgs {
  Tensor& o;
  Tensor& lse;
  KeySets& keys;  // out: the union key set of every query, for backward
  const Tensor& q;
  const Tensor& k;
  const Tensor& v;
  const Clusters& clusters;
  // false: the caller reads only keys.pairs() and hands keys to backward
  // unread. A backend whose backward walks the clusters instead (CUDA's
  // tiled path) then counts the pairs (keys.counted, one number copied back)
  // and builds no index lists (T^2 / 2K of them); the CPU, whose backward
  // walks them, builds them either way.
  bool key_sets = true;
  // With key_sets = false: where the pair count goes instead of
  // keys.counted, one f64 in ctx's memory, not read back (so a layer reads
  // all its heads' counts with one wait); null: keys.counted.
  double* pair_count = nullptr;
  RoutedSaved* saved = nullptr;  // out (optional): for the backward
};

// Gradients of the forward's o (dout) w.r.t. q, k, v; dq, dk, dv accumulate.
struct RoutedAttentionBackwardArgs {
  Tensor& dq;
  Tensor& dk;
  Tensor& dv;
  const Tensor& dout;
  const Tensor& o;    // the forward's
  const Tensor& lse;  // the forward's
  const Tensor& q;
  const Tensor& k;
  const Tensor& v;
  const KeySets& keys;       // the forward's: the CPU walks these pairs
  const Clusters& clusters;  // the forward's: CUDA walks the same pairs per cluster
  const RoutedSaved* saved = nullptr;  // the forward's (optional)
};

// Stacked heads: qn, kn (heads T, D); head s is scored against the centroids
// sets[s / (heads / sets.size())] (consecutive heads share a set: the layer
// stacks routing head r's sequences together), by one GEMM per set, then one
// tokens_choose or groups_choose over all heads (their runs with their own
// groups, ops/routing.h): the route of each head alone, renumbered.
void assign_clusters(Ctx& ctx, Clusters& cl, const Tensor& qn, const Tensor& kn,
                     const std::vector<const Centroids*>& sets, int64_t heads, const ClusterParams& p);
// One head.
void assign_clusters(Ctx& ctx, Clusters& cl, const Tensor& qn, const Tensor& kn, const Centroids& c,
                     const ClusterParams& p);
// The scores (rows, K) of stacked rows against their heads' centroid sets
// (assign_clusters' GEMMs: sets.size() equal stretches of rows).
Tensor stacked_centroid_scores(Ctx& ctx, const Tensor& xn, const std::vector<const Centroids*>& sets);
void routed_attention_forward(Ctx& ctx, const RoutedAttentionArgs& a);
void routed_attention_backward(Ctx& ctx, const RoutedAttentionBackwardArgs& a);
// Adds the members' normalised vectors to stats (queries, and keys where the
// lists differ); stacked heads: those of `heads`, head s's cluster c into
// row c, heads in order.
void accumulate_cluster_stats(Ctx& ctx, ClusterStats& s, const Tensor& qn, const Tensor& kn, const Clusters& cl,
                              HeadRange heads = {});
// Spherical k-means on the rows of x (n, D): random distinct rows, then
// `iters` rounds of assign (argmax dot) and mean, each rescaled to norm sqrt(D).
void kmeans_init(Ctx& ctx, Centroids& c, const Tensor& x, int iters, Rng& rng);
// EMA update from (all-reduced) stats; returns the mean |mu_new - mu_old|.
float ema_update(Ctx& ctx, Centroids& c, const ClusterStats& s, float decay);

// Commitment loss (VQ-VAE's, as the Routing Transformer adds it), over the
// queries that joined a cluster:
//   L = beta * (1/n) sum_t |qn_t - mu_c(t)|^2 / D,   dqn_t = 2 beta (qn_t - mu_c(t)) / (n D).
// commitment_sums returns sum_t |qn_t - mu_c(t)|^2 / D and n for one head of
// one sequence; commitment_backward writes dqn_t = scale (qn_t - mu_c(t)) for
// members (dqn accumulates) with scale = 2 beta / (n D) over the whole batch.
// sq_slot: where sq goes instead, one f64 in ctx's memory, not read back
// (the returned sq is then NaN); count is known on the host either way.
// Stacked heads: the queries of `heads` (those of centroid set c), qn and
// dqn holding every head.
struct CommitmentSums {
  double sq = 0;
  int64_t count = 0;
};
CommitmentSums commitment_sums(Ctx& ctx, const Tensor& qn, const Clusters& cl, const Centroids& c,
                               double* sq_slot = nullptr, HeadRange heads = {});
void commitment_backward(Ctx& ctx, Tensor& dqn, const Tensor& qn, const Clusters& cl, const Centroids& c, float scale,
                         HeadRange heads = {});

// The CPU reference (ops/cpu/routed_attention.cc) and the CUDA kernels (ops/cuda/routed_attention.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  CommitmentSums commitment_sums(Ctx& ctx, const Tensor& qn, const Clusters& cl, const Centroids& c, double* sq_slot,
                                 HeadRange heads);
  void commitment_backward(Ctx& ctx, Tensor& dqn, const Tensor& qn, const Clusters& cl, const Centroids& c, float scale,
                           HeadRange heads);
  void centroid_scores(Ctx& ctx, Tensor& s, const Tensor& xn, const Centroids& c);  // s (T, K) = xn . mu^T
  // Causal mode's choice: tokens_choose(tp: top-1, the heads' own clusters)
  // over stacked_centroid_scores. CUDA, at head dims 16, 32, 64 and 128
  // (others take the scores' GEMM and tokens_choose), finds each row's nearest centroid in one kernel that never writes
  // the scores: bf16 tensor-core scores bound which centroids can be the
  // nearest, and exact f32 scores of those decide (ops/cuda/routed_attention.cu).
  void nearest_clusters(Ctx& ctx, Route& r, const Tensor& xn, const std::vector<const Centroids*>& sets,
                        const TokensChooseParams& tp);
  void routed_attention_forward(Ctx& ctx, const RoutedAttentionArgs& a);
  void routed_attention_backward(Ctx& ctx, const RoutedAttentionBackwardArgs& a);
  void accumulate_cluster_stats(Ctx& ctx, ClusterStats& s, const Tensor& qn, const Tensor& kn, const Clusters& cl,
                                HeadRange heads);
  void kmeans_init(Ctx& ctx, Centroids& c, const Tensor& x, int iters, Rng& rng);
  float ema_update(Ctx& ctx, Centroids& c, const ClusterStats& s, float decay);
)

}  // namespace sy::ops
