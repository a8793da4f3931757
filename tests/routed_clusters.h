// Clusters for the routed attention tests that run the CUDA path's steps on
// the host (routed_attention_rows_test.cc, routed_pack_test.cc).
#pragma once
#include <vector>

#include "attention_rows.h"
#include "ops/layernorm.h"
#include "ops/routed_attention.h"
#include "ops/routing.h"

namespace sy::testing {

// Clusters from the layer's recipe on the host: LN of q and k, k-means
// centroids on the normalised queries, then the assignment.
inline ops::Clusters clusters_of(const Case& c, int64_t K, const ops::ClusterParams& p, Rng& rng, bool shared_keys = false) {
  Ctx& ctx = host_ctx();
  const int64_t T = c.q.dim(0), D = c.q.dim(1);
  Tensor qn = testing::zeros({T, D}), kn = testing::zeros({T, D}), m = testing::zeros({T}), r = testing::zeros({T});
  ops::layernorm_forward(ctx, {qn, m, r, c.q, Tensor(), Tensor()});
  ops::layernorm_forward(ctx, {kn, m, r, shared_keys ? c.q : c.k, Tensor(), Tensor()});
  ops::Centroids cent(K, D, ctx);
  ops::kmeans_init(ctx, cent, qn, 2, rng);
  ops::Clusters cl;
  ops::assign_clusters(ctx, cl, qn, kn, cent, p);
  return cl;
}

// One cluster (K = 1) over T tokens with the given members: a threshold route.
inline ops::Route one_cluster(int64_t T, const std::vector<int32_t>& in) {
  std::vector<float> score(T, 0.f);
  for (int32_t t : in) score[t] = 1.f;
  ops::Route r;
  ops::threshold_route(host_ctx(), r, Tensor::from_host(score), 0.5f);
  return r;
}

}  // namespace sy::testing
