#include "ops/routed_attention.h"

#include <initializer_list>
#include <vector>

#include "ops/backend.h"

namespace sy::ops {

Centroids::Centroids(int64_t k, int64_t d, Ctx& ctx)
    : K(k), D(d),
      mu(Tensor::zeros({k, d}, DType::f32, ctx)),
      sum(Tensor::zeros({k, d}, DType::f32, ctx)),
      count(Tensor::zeros({k}, DType::f32, ctx)) {}

ClusterStats::ClusterStats(int64_t k, int64_t d, Ctx& ctx)
    : sum(Tensor::zeros({k, d}, DType::f32, ctx)), count(Tensor::zeros({k}, DType::f32, ctx)) {}

namespace {
void check_rows(const Tensor& x, int64_t D, const char* what) {
  SY_CHECK(x.ndim() == 2 && x.dim(1) == D, what << " " << shape_str(x.shape()) << " is not (T, " << D << ")");
}
// Both lists over the heads' T tokens and the same K clusters per head.
void check_clusters(const Clusters& cl, int64_t T) {
  SY_CHECK(cl.queries.num_items == T && cl.keys.num_items == T,
           "routed attention: clusters over " << cl.queries.num_items << " queries and " << cl.keys.num_items
                                              << " keys, the heads have " << T);
  SY_CHECK(cl.keys.num_groups == cl.queries.num_groups,
           "routed attention: " << cl.queries.num_groups << " query clusters but " << cl.keys.num_groups
                                << " key clusters");
  SY_CHECK(cl.heads >= 1 && T % cl.heads == 0 && cl.num() % cl.heads == 0,
           "routed attention: " << cl.heads << " stacked heads for " << T << " tokens and " << cl.num()
                                << " clusters");
}
// The clusters of a head range; count < 0 becomes the rest.
HeadRange resolve(const Clusters& cl, HeadRange h) {
  if (h.count < 0) h.count = cl.heads - h.first;
  SY_CHECK(h.first >= 0 && h.count >= 0 && h.first + h.count <= cl.heads,
           "routed attention: heads [" << h.first << ", " << h.first + h.count << ") of " << cl.heads);
  return h;
}
// All of q, k, v and the outputs f32, or all bf16 where CUDA has the
// tensor-core path (head dim 64 or 128, either mode); lse f32.
void check_dtypes(const char* op, const Clusters& cl, std::initializer_list<const Tensor*> ts, const Tensor& lse) {
  const Tensor& q = **ts.begin();
  const DType dt = q.dtype();
  for (const Tensor* t : ts)
    SY_CHECK(t->dtype() == dt && (dt == DType::f32 || dt == DType::bf16),
             op << ": q, k, v and the outputs must be all f32 or all bf16, got " << dtype_name(t->dtype())
                << " beside " << dtype_name(dt));
  check_dtype(lse, DType::f32, "routed attention lse");
  const int64_t D = q.dim(1);
  SY_CHECK(dt == DType::f32 || D == 64 || D == 128, op << ": bf16 needs head dim 64 or 128, got " << D);
}
// The per-backend steps of cluster assignment; the rest is the routing core.
void scores_into(Ctx& ctx, Tensor& s, const Tensor& xn, const Centroids& c) {
  SY_DISPATCH(ctx, centroid_scores, ctx, s, xn, c);
}
void nearest(Ctx& ctx, Route& r, const Tensor& xn, const std::vector<const Centroids*>& sets,
             const TokensChooseParams& tp) {
  SY_DISPATCH(ctx, nearest_clusters, ctx, r, xn, sets, tp);
}
}  // namespace

Tensor stacked_centroid_scores(Ctx& ctx, const Tensor& xn, const std::vector<const Centroids*>& sets) {
  const int64_t N = xn.dim(0), per_set = N / static_cast<int64_t>(sets.size());
  Tensor s = Tensor::empty({N, sets[0]->K}, DType::f32, ctx);
  for (size_t i = 0; i < sets.size(); ++i) {
    Tensor rows = s.rows(i * per_set, (i + 1) * per_set);
    scores_into(ctx, rows, xn.rows(i * per_set, (i + 1) * per_set), *sets[i]);
  }
  return s;
}

void assign_clusters(Ctx& ctx, Clusters& cl, const Tensor& qn, const Tensor& kn,
                     const std::vector<const Centroids*>& sets, int64_t heads, const ClusterParams& p) {
  SY_CHECK(!sets.empty() && heads >= 1 && heads % static_cast<int64_t>(sets.size()) == 0,
           "assign_clusters: " << heads << " heads over " << sets.size() << " centroid sets");
  const Centroids& c0 = *sets[0];
  SY_CHECK(c0.K >= 1, "routed attention needs at least one centroid");
  for (const Centroids* c : sets)
    SY_CHECK(c->K == c0.K && c->D == c0.D, "assign_clusters: centroid sets of " << c->K << " x " << c->D
                                                                                 << " and " << c0.K << " x " << c0.D);
  check_rows(qn, c0.D, "cluster queries");
  check_shape(kn, qn.shape(), "cluster keys");
  SY_CHECK(qn.dim(0) % heads == 0, "assign_clusters: " << qn.dim(0) << " rows in " << heads << " heads");
  for (const Centroids* c : sets) check_device(ctx, "assign_clusters", {&qn, &kn, &c->mu});
  const int64_t T = qn.dim(0) / heads;
  cl.heads = heads;
  if (p.mode == ClusterMode::causal) {
    TokensChooseParams tp;
    tp.k = 1;
    tp.dropless = p.dropless;
    tp.capacity_factor = p.capacity_factor;
    tp.segment = heads > 1 ? T : 0;  // every head its own clusters
    // Queries by their normalised query, keys by their normalised key: the
    // vectors whose dot product the attention trains are the ones that decide
    // membership, so a useful (query, key) pair is pulled into one cluster.
    // Each token's choice depends on that token alone: causal.
    nearest(ctx, cl.queries, qn, sets, tp);
    nearest(ctx, cl.keys, kn, sets, tp);
  } else {
    const int64_t S = (T + c0.K - 1) / c0.K;
    groups_choose(ctx, cl.queries, stacked_centroid_scores(ctx, qn, sets), S, heads > 1 ? T : 0, /*own_groups=*/true);
    groups_choose(ctx, cl.keys, stacked_centroid_scores(ctx, kn, sets), S, heads > 1 ? T : 0, /*own_groups=*/true);
  }
}

void assign_clusters(Ctx& ctx, Clusters& cl, const Tensor& qn, const Tensor& kn, const Centroids& c,
                     const ClusterParams& p) {
  assign_clusters(ctx, cl, qn, kn, {&c}, 1, p);
}

void routed_attention_forward(Ctx& ctx, const RoutedAttentionArgs& a) {
  SY_CHECK(a.q.ndim() == 2, "routed attention: q " << shape_str(a.q.shape()) << " is not (T, D)");
  const int64_t T = a.q.dim(0);
  check_shape(a.k, a.q.shape(), "routed attention k");
  check_shape(a.v, a.q.shape(), "routed attention v");
  check_shape(a.o, a.q.shape(), "routed attention o");
  check_shape(a.lse, {T}, "routed attention lse");
  check_clusters(a.clusters, T);
  check_dtypes("routed_attention_forward", a.clusters, {&a.q, &a.k, &a.v, &a.o}, a.lse);
  check_device(ctx, "routed_attention_forward",
               {&a.o, &a.lse, &a.q, &a.k, &a.v, &a.clusters.queries.group, &a.clusters.keys.group});
  SY_DISPATCH(ctx, routed_attention_forward, ctx, a);
}

void routed_attention_backward(Ctx& ctx, const RoutedAttentionBackwardArgs& a) {
  SY_CHECK(a.q.ndim() == 2, "routed attention backward: q " << shape_str(a.q.shape()) << " is not (T, D)");
  const int64_t T = a.q.dim(0);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&a.k, &a.v, &a.o, &a.dout, &a.dq, &a.dk, &a.dv})
    check_shape(*t, a.q.shape(), "routed attention backward operand");
  check_shape(a.lse, {T}, "routed attention backward lse");
  check_clusters(a.clusters, T);
  check_dtypes("routed_attention_backward", a.clusters, {&a.q, &a.k, &a.v, &a.o, &a.dout, &a.dq, &a.dk, &a.dv},
               a.lse);
  // Key sets the forward only counted (key_sets = false) go unread: CUDA's
  // packed path walks the clusters. Otherwise they are the forward's.
  if (a.keys.off.defined() || a.keys.counted < 0) {
    SY_CHECK(a.keys.queries() == T,
             "routed attention backward: key sets for " << a.keys.queries() << " queries, head has " << T);
    check_dtype(a.keys.off, DType::i64, "key set offsets");
    check_dtype(a.keys.idx, DType::i32, "key set indices");
  }
  check_device(ctx, "routed_attention_backward",
               {&a.dq, &a.dk, &a.dv, &a.dout, &a.o, &a.lse, &a.q, &a.k, &a.v, &a.keys.off, &a.keys.idx,
                &a.clusters.queries.group, &a.clusters.keys.group});
  SY_DISPATCH(ctx, routed_attention_backward, ctx, a);
}

void accumulate_cluster_stats(Ctx& ctx, ClusterStats& s, const Tensor& qn, const Tensor& kn, const Clusters& cl,
                              HeadRange heads) {
  const int64_t K = cl.per_head();
  heads = resolve(cl, heads);
  check_clusters(cl, qn.dim(0));
  SY_CHECK(s.sum.ndim() == 2 && s.sum.dim(0) == K, "cluster stats " << shape_str(s.sum.shape()) << " for " << K << " clusters");
  check_rows(qn, s.sum.dim(1), "cluster queries");
  check_shape(kn, qn.shape(), "cluster keys");
  check_shape(s.count, {K}, "cluster counts");
  check_device(ctx, "accumulate_cluster_stats", {&s.sum, &s.count, &qn, &kn, &cl.queries.group, &cl.keys.group});
  SY_DISPATCH(ctx, accumulate_cluster_stats, ctx, s, qn, kn, cl, heads);
}

void kmeans_init(Ctx& ctx, Centroids& c, const Tensor& x, int iters, Rng& rng) {
  check_rows(x, c.D, "k-means input");
  SY_CHECK(x.dim(0) >= 1, "k-means on an empty batch");
  check_device(ctx, "kmeans_init", {&x, &c.mu});
  SY_DISPATCH(ctx, kmeans_init, ctx, c, x, iters, rng);
}

float ema_update(Ctx& ctx, Centroids& c, const ClusterStats& s, float decay) {
  check_shape(s.sum, {c.K, c.D}, "cluster stats sum");
  check_shape(s.count, {c.K}, "cluster stats count");
  check_device(ctx, "ema_update", {&c.mu, &c.sum, &c.count, &s.sum, &s.count});
  SY_DISPATCH(ctx, ema_update, ctx, c, s, decay);
}

namespace {
void check_commitment(const Tensor& qn, const Clusters& cl, const Centroids& c) {
  check_rows(qn, c.D, "commitment queries");
  SY_CHECK(cl.queries.num_items == qn.dim(0), "commitment: clusters over " << cl.queries.num_items << " of " << qn.dim(0) << " queries");
  SY_CHECK(cl.per_head() == c.K, "commitment: " << cl.per_head() << " clusters per head, " << c.K << " centroids");
}
}  // namespace

CommitmentSums commitment_sums(Ctx& ctx, const Tensor& qn, const Clusters& cl, const Centroids& c, double* sq_slot,
                               HeadRange heads) {
  check_commitment(qn, cl, c);
  heads = resolve(cl, heads);
  check_device(ctx, "commitment_sums", {&qn, &c.mu, &cl.queries.group});
  SY_DISPATCH(ctx, commitment_sums, ctx, qn, cl, c, sq_slot, heads);
}

void commitment_backward(Ctx& ctx, Tensor& dqn, const Tensor& qn, const Clusters& cl, const Centroids& c, float scale,
                         HeadRange heads) {
  check_commitment(qn, cl, c);
  check_shape(dqn, qn.shape(), "commitment dqn");
  heads = resolve(cl, heads);
  check_device(ctx, "commitment_backward", {&dqn, &qn, &c.mu, &cl.queries.group});
  SY_DISPATCH(ctx, commitment_backward, ctx, dqn, qn, cl, c, scale, heads);
}

}  // namespace sy::ops
