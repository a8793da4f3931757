// Clusters for the routed attention tests that run the CUDA path's steps on
// the host (routed_attention_rows_test.cc, routed_union_pack_test.cc), and a
// head's routes prepared as the CUDA launcher prepares them.
#pragma once
#include <cmath>
#include <vector>

#include "attention_rows.h"
#include "ops/cuda/routed_attention_rows.h"
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

// The CPU reference on a head and its clusters: o, lse, the key sets, and
// the gradients from c.start.
struct Reference {
  Tensor o, lse;
  ops::KeySets ks;
  Grads grads;
};
inline Reference reference(const Case& c, const ops::Clusters& cl) {
  Ctx& ctx = host_ctx();
  const int64_t T = c.q.dim(0), D = c.q.dim(1);
  Reference r{testing::zeros({T, D}), testing::zeros({T}), {}, {c.start.dq.clone(), c.start.dk.clone(), c.start.dv.clone()}};
  ops::routed_attention_forward(ctx, {r.o, r.lse, r.ks, c.q, c.k, c.v, cl});
  ops::routed_attention_backward(ctx, {r.grads.dq, r.grads.dk, r.grads.dv, c.dout, r.o, r.lse, c.q, c.k, c.v, r.ks, cl});
  return r;
}

// One side prepared as the CUDA launcher prepares it (host buffers).
struct HostSide {
  std::vector<int32_t> item, row_group;
  std::vector<uint64_t> bits;
  ops::routed::Side side{};
  HostSide(const ops::Route& r, int64_t T, int64_t K, int64_t W)
      : item(r.rows(), -7), row_group(r.rows(), -7), bits(T * W, 77) {
    const int32_t* g = r.group.data<int32_t>();
    const int32_t* s = r.slot.data<int32_t>();
    const int32_t* o = r.offset.data<int32_t>();
    uint64_t* b = W > 0 ? bits.data() : nullptr;
    ops::routed::side_steps(HostRun{}, g, s, o, T, r.k, K, W, item.data(), row_group.data(), b);
    side = {g, s, o, r.k, item.data(), row_group.data(), b};
  }
};

// As routed_attention.cu's prepare: K clusters per head, bitmaps only where
// a token can be in several clusters.
inline int64_t host_words(const ops::Clusters& cl) {
  return ops::routed::bitmap_words(cl.queries.k, cl.keys.k, cl.per_head());
}
struct HostHead {
  HostSide qs, ks;
  ops::routed::Head h;
  HostHead(const Tensor& q, const Tensor& k, const Tensor& v, const ops::Clusters& cl)
      : qs(cl.queries, q.dim(0), cl.per_head(), host_words(cl)), ks(cl.keys, q.dim(0), cl.per_head(), host_words(cl)) {
    const int64_t T = q.dim(0), D = q.dim(1);
    h = {q.f32(), k.f32(), v.f32(), T, D, cl.per_head(), host_words(cl), 1.f / std::sqrt(static_cast<float>(D)),
         qs.side, ks.side};
  }
};

}  // namespace sy::testing
