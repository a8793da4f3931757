// Inputs of the routed-attention and key-set attention op cases and tests
// (tests/backend_ops/): separated clusters, routes given as inputs, key sets.
#pragma once
#include "tests/backend_ops/harness.h"

namespace sy::op_test {

// ---- routed attention's clusters ----
//
// Normalised vectors and centroids: rows of norm sqrt(D). The CUDA scores come
// from a GEMM that rounds differently from the CPU's loop, so inputs are
// redrawn until every decision has a score gap >= 1e-3: causal, each row's
// best centroid against its second; balanced, each centroid's S-th best item
// against its (S+1)-th.
inline Tensor unit_rows(int64_t n, int64_t D, Rng& rng) {
  Tensor t = randn({n, D}, rng);
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0;
    for (int64_t d = 0; d < D; ++d) sq += double(t.f32()[i * D + d]) * t.f32()[i * D + d];
    const float f = static_cast<float>(std::sqrt(D / sq));
    for (int64_t d = 0; d < D; ++d) t.f32()[i * D + d] *= f;
  }
  return t;
}

inline bool decisions_separated(const Tensor& x, const Tensor& mu, ops::ClusterMode mode) {
  constexpr double kGap = 1e-3;
  const int64_t T = x.dim(0), D = x.dim(1), K = mu.dim(0);
  std::vector<double> s(T * K);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t d = 0; d < D; ++d) s[t * K + k] += double(x.f32()[t * D + d]) * mu.f32()[k * D + d];
  if (mode == ops::ClusterMode::causal) {
    for (int64_t t = 0; t < T && K > 1; ++t) {
      std::vector<double> row(s.begin() + t * K, s.begin() + (t + 1) * K);
      std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<double>());
      if (row[0] - row[1] < kGap) return false;
    }
    return true;
  }
  const int64_t S = (T + K - 1) / K;
  for (int64_t k = 0; k < K && S < T; ++k) {
    std::vector<double> col(T);
    for (int64_t t = 0; t < T; ++t) col[t] = s[t * K + k];
    std::sort(col.begin(), col.end(), std::greater<double>());
    if (col[S - 1] - col[S] < kGap) return false;
  }
  return true;
}

struct ClusterSpec {
  std::string name;
  int64_t T, K, D;
  ops::ClusterParams params;
  bool shared_keys;  // kn = qn: the key lists equal the query lists
};

// Inputs: qn, kn (T, D), mu (K, D), the centroids' EMA sum (K, D) and count
// (K), a batch's stats sum (K, D) and count (K) to add onto, dqn (T, D).
inline Ins cluster_inputs(const ClusterSpec& c, Rng& r) {
  Tensor qn, kn, mu;
  do {
    qn = unit_rows(c.T, c.D, r);
    kn = c.shared_keys ? qn.clone() : unit_rows(c.T, c.D, r);
    mu = unit_rows(c.K, c.D, r);
  } while (!decisions_separated(qn, mu, c.params.mode) || !decisions_separated(kn, mu, c.params.mode));
  Tensor count = Tensor::empty({c.K}, DType::f32, host_ctx()), s_count = count.clone();
  for (int64_t k = 0; k < c.K; ++k) {
    count.f32()[k] = 1.f + static_cast<float>(r.below(20));
    s_count.f32()[k] = static_cast<float>(r.below(5));
  }
  return Ins{qn, kn, mu, randn({c.K, c.D}, r), count, randn({c.K, c.D}, r), s_count, randn({c.T, c.D}, r)};
}

inline ops::Centroids centroids_of(Tensor mu, Tensor sum, Tensor count) {
  ops::Centroids c;
  c.K = mu.dim(0), c.D = mu.dim(1);
  c.mu = std::move(mu), c.sum = std::move(sum), c.count = std::move(count);
  c.initialized = true;
  return c;
}

// assign_clusters: both Routes (class F for the weights, which are GEMM
// scores; every integer output exact).
inline OpCase assign_clusters_case(const ClusterSpec& c) {
  const int64_t k = c.params.mode == ops::ClusterMode::causal ? 1 : c.K;
  return {"assign_clusters_" + c.name, Tol::f32, [c](Rng& r) { return cluster_inputs(c, r); },
          [c, k](Ctx& x, const Ins&) {
            Outs o = route_outputs(x, c.T, k, c.K), keys = route_outputs(x, c.T, k, c.K);
            o.insert(o.end(), keys.begin(), keys.end());
            return o;
          },
          [c](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
            ops::Clusters cl;
            ops::assign_clusters(x, cl, in[0], in[1], centroids_of(in[2], in[3], in[4]), c.params);
            std::vector<Tensor> q(o.begin(), o.begin() + 6), kk(o.begin() + 6, o.end());
            put_route(x, cl.queries, q);
            put_route(x, cl.keys, kk);
          }};
}

// The centroid upkeep after an assignment: stats accumulated onto given
// values, the commitment sums and backward, then the EMA update.
inline OpCase centroid_update_case(const ClusterSpec& c) {
  return {"cluster_stats_commitment_ema_" + c.name, Tol::f32, [c](Rng& r) { return cluster_inputs(c, r); },
          [c](Ctx& x, const Ins&) {
            return Outs{fresh(x, {c.K, c.D}), fresh(x, {c.K}), fresh(x, {c.T, c.D}), fresh(x, {c.K, c.D}),
                        fresh(x, {c.K, c.D}), fresh(x, {c.K}), fresh(x, {3})};
          },
          [c](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
            const int from[6] = {5, 6, 7, 2, 3, 4};  // stats sum, count, dqn, mu, EMA sum, count
            for (int i = 0; i < 6; ++i) o[i].copy_from(in[from[i]], x);
            ops::Centroids cent = centroids_of(o[3], o[4], o[5]);
            ops::Clusters cl;
            ops::assign_clusters(x, cl, in[0], in[1], cent, c.params);
            ops::ClusterStats st;
            st.sum = o[0], st.count = o[1];
            ops::accumulate_cluster_stats(x, st, in[0], in[1], cl);
            const ops::CommitmentSums cs = ops::commitment_sums(x, in[0], cl, cent);
            ops::commitment_backward(x, o[2], in[0], cl, cent, 0.37f);
            const float drift = ops::ema_update(x, cent, st, 0.9f);
            put(x, o[6], std::vector<float>{static_cast<float>(cs.sq), static_cast<float>(cs.count), drift});
          }};
}

// Stacked heads (ops/routed_attention.h's Clusters): 4 heads of T tokens, two
// centroid sets (heads 0-1, 2-3): both routes over all heads, then set 1's
// stats, commitment sums and backward over heads [2, 4) onto given values.
// Inputs: qn, kn (4T, D), mu of set 0 and set 1 (K, D), stats sum (K, D) and
// count (K), dqn (4T, D).
inline OpCase stacked_clusters_case(const std::string& name, int64_t T, int64_t K, int64_t D, const ops::ClusterParams& p) {
  const int64_t H = 4, N = H * T, k = p.mode == ops::ClusterMode::causal ? 1 : K;
  return {"stacked_clusters_" + name, Tol::f32,
          [=](Rng& r) {
            Tensor qn, kn, mu0, mu1;
            auto separated = [&](const Tensor& x) {  // each head against its set's centroids
              for (int64_t h = 0; h < H; ++h)
                if (!decisions_separated(x.rows(h * T, (h + 1) * T).clone(), h < 2 ? mu0 : mu1, p.mode)) return false;
              return true;
            };
            do {
              qn = unit_rows(N, D, r), kn = unit_rows(N, D, r), mu0 = unit_rows(K, D, r), mu1 = unit_rows(K, D, r);
            } while (!separated(qn) || !separated(kn));
            Tensor count = Tensor::empty({K}, DType::f32, host_ctx());
            for (int64_t i = 0; i < K; ++i) count.f32()[i] = static_cast<float>(r.below(5));
            return Ins{qn, kn, mu0, mu1, randn({K, D}, r), count, randn({N, D}, r)};
          },
          [=](Ctx& x, const Ins&) {
            Outs o = route_outputs(x, N, k, H * K), keys = route_outputs(x, N, k, H * K);
            o.insert(o.end(), keys.begin(), keys.end());
            for (auto t : {fresh(x, {K, D}), fresh(x, {K}), fresh(x, {N, D}), fresh(x, {2})}) o.push_back(t);
            return o;
          },
          [=](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
            const ops::Centroids c0 = centroids_of(in[2], in[4], in[5]), c1 = centroids_of(in[3], in[4], in[5]);
            ops::Clusters cl;
            ops::assign_clusters(x, cl, in[0], in[1], {&c0, &c1}, H, p);
            std::vector<Tensor> q(o.begin(), o.begin() + 6), kk(o.begin() + 6, o.begin() + 12);
            put_route(x, cl.queries, q);
            put_route(x, cl.keys, kk);
            o[12].copy_from(in[4], x);
            o[13].copy_from(in[5], x);
            o[14].copy_from(in[6], x);
            ops::ClusterStats st;
            st.sum = o[12], st.count = o[13];
            ops::accumulate_cluster_stats(x, st, in[0], in[1], cl, {2, 2});
            const ops::CommitmentSums cs = ops::commitment_sums(x, in[0], cl, c1, nullptr, {2, 2});
            ops::commitment_backward(x, o[14], in[0], cl, c1, 0.37f, {2, 2});
            put(x, o[15], std::vector<float>{static_cast<float>(cs.sq), static_cast<float>(cs.count)});
          }};
}

// ---- routed attention's attention ----
//
// The clusters are made once, on the host, by the layer's recipe (LN of q and
// k, k-means centroids on the normalised queries, the assignment; the
// assignment itself is tested above) and given to both backends as inputs
// (each list's group, slot and offset), so both attend over the same routes.

struct RoutedSpec {
  std::string name;
  int64_t T, K, D;
  ops::ClusterParams params;
  bool shared_keys;   // kn = LN(q): the key lists equal the query lists
  int64_t heads = 1;  // stacked heads of T tokens each (one centroid set)
};

// A Route's device-side fields from inputs (group, slot, offset on ctx) and its
// host part from the offsets; weight, count and capacity are not read by the attention.
inline ops::Route route_from(const Tensor& group, const Tensor& slot, const Tensor& offset, int64_t T) {
  ops::Route r;
  r.num_items = T;
  r.k = group.numel() / T;
  r.num_groups = offset.numel() - 1;
  r.group = group, r.slot = slot, r.offset = offset;
  r.host_offset = offset.to_vector<int32_t>();
  return r;
}

// Inputs: q, k, v, dout (T, D), then group, slot, offset of the query list and of the key list.
inline Ins routed_inputs(const RoutedSpec& s, Rng& r) {
  Ctx& h = host_ctx();
  const int64_t N = s.T * s.heads;
  Ins in{randn({N, s.D}, r), randn({N, s.D}, r), randn({N, s.D}, r), randn({N, s.D}, r)};
  Tensor qn = out(h, {N, s.D}), kn = out(h, {N, s.D}), m = out(h, {N}), rs = out(h, {N});
  ops::layernorm_forward(h, {qn, m, rs, in[0], Tensor(), Tensor()});
  ops::layernorm_forward(h, {kn, m, rs, s.shared_keys ? in[0] : in[1], Tensor(), Tensor()});
  ops::Centroids c(s.K, s.D, h);
  ops::kmeans_init(h, c, qn, 2, r);
  ops::Clusters cl;
  ops::assign_clusters(h, cl, qn, kn, {&c}, s.heads, s.params);
  for (const ops::Route* rt : {&cl.queries, &cl.keys})
    for (const Tensor* t : {&rt->group, &rt->slot, &rt->offset}) in.push_back(t->clone());
  return in;
}

// Outputs: o, lse (finite entries; -inf as 0), lse's -inf flags, the key
// sets' offsets and indices (padded to T*T with -1), dq, dk, dv.
// T: all heads' tokens (heads > 1: stacked heads, ops/routed_attention.h).
inline OpCase routed_attention_case(const std::string& name, int64_t T, int64_t D, std::function<Ins(Rng&)> inputs,
                             int64_t heads = 1) {
  return {"routed_attention_" + name, Tol::f32, std::move(inputs),
          [T, D](Ctx& x, const Ins&) {
            return Outs{fresh(x, {T, D}), fresh(x, {T}), fresh(x, {T}, DType::i32), fresh(x, {T + 1}, DType::i64),
                        fresh(x, {T * T}, DType::i32), acc(x, {T, D}), acc(x, {T, D}), acc(x, {T, D})};
          },
          [T, heads](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
            ops::Clusters cl{route_from(in[4], in[5], in[6], T), route_from(in[7], in[8], in[9], T), heads};
            Tensor lse = out(x, {T});
            poison(lse, x);
            ops::KeySets ks;
            ops::RoutedSaved saved;  // the forward's packing for the backward; without it, the same bits
            ops::routed_attention_forward(x, {o[0], lse, ks, in[0], in[1], in[2], cl, true, nullptr, &saved});
            std::vector<Tensor> again;
            for (int i = 5; i < 8; ++i) again.push_back(o[i].clone(x));  // the starting values (accumulated onto)
            ops::routed_attention_backward(x, {o[5], o[6], o[7], in[3], o[0], lse, in[0], in[1], in[2], ks, cl, &saved});
            ops::routed_attention_backward(x, {again[0], again[1], again[2], in[3], o[0], lse, in[0], in[1], in[2], ks, cl});
            for (int i = 0; i < 3; ++i)
              EXPECT_EQ(again[i].to(host_ctx()).to_vector<float>(), o[5 + i].to(host_ctx()).to_vector<float>())
                  << "backward without the forward's saved packing, gradient " << i;
            std::vector<float> l = lse.to_vector<float>();
            std::vector<int32_t> inf(T, 0);
            for (int64_t t = 0; t < T; ++t)
              if (std::isinf(l[t]) && l[t] < 0) inf[t] = 1, l[t] = 0.f;
            put(x, o[1], l);
            put(x, o[2], inf);
            o[3].copy_from(ks.off, x);
            std::vector<int32_t> idx = ks.idx.to_vector<int32_t>();
            idx.resize(T * T, -1);
            put(x, o[4], idx);
          }};
}

inline OpCase routed_attention_case(const RoutedSpec& s) {
  return routed_attention_case(s.name, s.T * s.heads, s.D, [s](Rng& r) { return routed_inputs(s, r); }, s.heads);
}

// One cluster (K = 1) over T tokens with the given members: a threshold route.
inline ops::Route one_cluster(int64_t T, const std::vector<int32_t>& members) {
  std::vector<float> score(T, 0.f);
  for (int32_t t : members) score[t] = 1.f;
  ops::Route r;
  ops::threshold_route(host_ctx(), r, Tensor::from_host(score), 0.5f);
  return r;
}

// Query 1 has no key at or before it (attends to itself), 0, 2, 5 are in no cluster.
inline Ins lone_query_inputs(int64_t D, Rng& r) {
  Ins in{randn({6, D}, r), randn({6, D}, r), randn({6, D}, r), randn({6, D}, r)};
  const ops::Route q = one_cluster(6, {1, 3, 4}), k = one_cluster(6, {2, 3});
  for (const ops::Route* rt : {&q, &k})
    for (const Tensor* t : {&rt->group, &rt->slot, &rt->offset}) in.push_back(t->clone());
  return in;
}

// ---- attention over key sets (local and block top-k heads) ----
//
// keys(x, in) makes the key sets on the backend (local_keysets, or
// block_topk_keysets of q and k: both compared exactly), or takes them from
// inputs 4 and 5 (offsets, indices). Inputs: q, k, v, dout (T, D).
// Outputs: o, lse (-inf as 0), lse's -inf flags, the key sets' offsets and
// indices (padded to T*T with -1), dq, dk, dv.
inline OpCase sparse_attention_case(const std::string& name, int64_t T, int64_t D,
                             std::function<ops::KeySets(Ctx&, const Ins&)> keys,
                             std::function<Ins(Rng&)> extra = nullptr) {
  return {"sparse_attention_" + name, Tol::f32,
          [T, D, extra](Rng& r) {
            Ins in{randn({T, D}, r), randn({T, D}, r), randn({T, D}, r), randn({T, D}, r)};
            if (extra)
              for (Tensor& t : extra(r)) in.push_back(t);
            return in;
          },
          [T, D](Ctx& x, const Ins&) {
            return Outs{fresh(x, {T, D}), fresh(x, {T}), fresh(x, {T}, DType::i32), fresh(x, {T + 1}, DType::i64),
                        fresh(x, {T * T}, DType::i32), acc(x, {T, D}), acc(x, {T, D}), acc(x, {T, D})};
          },
          [T, keys](Ctx& x, const Ins& in, std::vector<Tensor>& o) {
            const ops::KeySets ks = keys(x, in);
            Tensor lse = out(x, {T});
            poison(lse, x);
            ops::sparse_attention_forward(x, {o[0], lse, in[0], in[1], in[2], ks});
            ops::sparse_attention_backward(x, {o[5], o[6], o[7], in[3], o[0], lse, in[0], in[1], in[2], ks});
            std::vector<float> l = lse.to_vector<float>();
            std::vector<int32_t> inf(T, 0);
            for (int64_t t = 0; t < T; ++t)
              if (std::isinf(l[t]) && l[t] < 0) inf[t] = 1, l[t] = 0.f;
            put(x, o[1], l);
            put(x, o[2], inf);
            o[3].copy_from(ks.off, x);
            std::vector<int32_t> idx = ks.idx.to_vector<int32_t>();
            idx.resize(T * T, -1);
            put(x, o[4], idx);
          }};
}

// Any key sets of T queries: random keys in random order, a quarter empty
// (o = 0, lse = -inf), keys repeated; as inputs (offsets i64, indices i32).
inline Ins random_keyset_inputs(int64_t T, Rng& r) {
  ops::KeySetsBuilder b;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> keys;
    const int64_t n = r.below(4) == 0 ? 0 : static_cast<int64_t>(r.below(T + 1));
    for (int64_t i = 0; i < n; ++i) keys.push_back(static_cast<int32_t>(r.below(T)));
    b.add_query(keys);
  }
  const ops::KeySets ks = b.build(host_ctx());
  return {ks.off, ks.idx};
}

}  // namespace sy::op_test
