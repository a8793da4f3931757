// Attention over per-query key sets (ops/sparse_attention.h) on CUDA, written
// as plain functions of one query, one key or one pair, in the style of
// routed_attention_rows.h (whose SY_HD, step-runner convention and lane
// helpers this reuses). ops/cuda/sparse_attention.cu gives every call its own
// thread (the key sets' functions) or warp (the attention's: a warp a row);
// tests/sparse_attention_rows_test.cc runs the same functions and step
// sequences on the host (a warp as 32 threads) against the CPU reference, so
// the indexing, the lanes' shares and the transposition are checked without
// a GPU.
//
// Forward, a warp per query t over its keys K(t) = idx[off[t] .. off[t+1])
//   (ForwardWarp below): an online softmax, m the running max, l the running
//   sum, o_t = sum_j exp(s_tj - m) v_j / l; lse_t = m + log l (K(t) empty:
//   o_t = 0, lse_t = -inf). (The CPU keeps the scores and adds a_tj v_j with
//   each weight already divided by l: the same sums up to rounding.)
// Backward, FlashAttention's form from the saved o and lse:
//   queries  warp t: Delta_t = dout_t . o_t (kept for the key pass) and
//            dq_t += sum_j ds_tj k_j over K(t) in key-set order
//   pairs    warp t's lane 0 writes (key u, query t) at the index of each of
//            its pairs in idx; a stable radix sort on u then lists each
//            key's queries in ascending t (the transposed key sets, built on
//            the device: the layer's key sets are on the device already), and
//            koff[u] = the first sorted pair with key >= u (a lower bound)
//   keys     warp u: dk_u += sum_t ds_tu q_t and dv_u += sum_t a_tu dout_t
//            over its queries in ascending t - the CPU's order of additions
// with a_tj = exp(s_tj - lse_t) and ds_tj = a_tj (dout_t . v_j - Delta_t) / sqrt(D).
// Every output has one owner adding in a fixed order: no atomics, two runs
// give the same bits.
//
// Local key sets, one thread per query (and one more for the last offset):
//   K(t) = {max(0, t-w+1) .. t};  off[t] = sum_{s<t} min(s+1, w)
//        = t(t+1)/2 for t <= w, w(w+1)/2 + (t-w) w beyond - closed form, so
//   no scan and no copy back.
//
// Block top-k key sets (the CPU's rule, ops/sparse_attention.h): one thread per
// element of the block means, then one per query choosing its blocks (see
// BlockTopkKeys), offsets in closed form (block_topk_offset).
#pragma once
#include "ops/cuda/routed_attention_rows.h"

namespace sy::ops::sparse {


// One head of one sequence: q, k, v (T, D) contiguous, and its key sets.
struct Head {
  const float *q, *k, *v;
  int64_t T, D;
  float scale;         // 1 / sqrt(D)
  const int64_t* off;  // (T + 1)
  const int32_t* idx;  // (pairs)
};

// ---- a warp a row ----------------------------------------------------------
// Each query (forward, backward's query pass) or key (key pass) is one
// warp's, as in routed_attention_rows.h (whose lane helpers these are). One
// thread a query, before, took 138 ms at 4k tokens, w 256, on an H200.
using routed::kMaxLaneValues;
using routed::lane_fma;
using routed::lane_load;
using routed::lane_store;
using routed::lane_values;
using routed::OnlineRow;
using routed::PairGrad;
using routed::warp_dot;
using routed::warp_pair_grad;
using routed::with_lane_values;

// ---- forward --------------------------------------------------------------

// Query t: an online softmax over K(t) in key-set order (FlashAttention's
// rescaling, one key at a time), o_t = acc / l, lse_t = m + log l.
template <int V>
struct ForwardWarp {
  Head h;
  float* o;    // (T, D)
  float* lse;  // (T)
  template <class W>
  SY_HD void operator()(const W& w, int64_t t) const {
    const int64_t D = h.D, j0 = h.off[t], j1 = h.off[t + 1];
    float q[V];
    lane_load(w, q, h.q + t * D, D);
    OnlineRow<V> row;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t u = h.idx[j];
      row.add(w, warp_dot(w, q, h.k + u * D, D) * h.scale, h.v + u * D, D);
    }
    row.write(w, j1 == j0, o + t * D, lse + t, D);
  }
};

// ---- backward -------------------------------------------------------------

struct BackwardBuffers {
  const float* dout;  // (T, D)
  const float* o;     // (T, D) the forward's
  const float* lse;   // (T) the forward's
  float* delta;       // (T) dout_t . o_t
  uint64_t* pair_key;     // (pairs) key u of pair p, unsorted
  int32_t* pair_query;    // (pairs) query t of pair p, unsorted
  const uint64_t* sorted_key;  // (pairs) keys after the stable sort
  const int32_t* key_query;    // (pairs) the queries in that order
  const int32_t* koff;         // (T + 1) key u's queries: key_query[koff[u] .. koff[u+1])
  float *dq, *dk, *dv;         // (T, D), accumulate
};

// Query t: Delta_t, dq_t (its sum over K(t) in key-set order, then added to
// dq), and its pairs written for the transposition (lane 0).
template <int V>
struct BackwardQueryWarp {
  Head h;
  BackwardBuffers b;
  template <class W>
  SY_HD void operator()(const W& w, int64_t t) const {
    const int64_t D = h.D, j0 = h.off[t], j1 = h.off[t + 1];
    float q[V], g[V], dq[V] = {};
    lane_load(w, q, h.q + t * D, D);
    lane_load(w, g, b.dout + t * D, D);
    const float delta = warp_dot(w, g, b.o + t * D, D);
    if (w.lane() == 0) b.delta[t] = delta;
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t u = h.idx[j];
      const PairGrad p = warp_pair_grad(w, q, g, h.k + u * D, h.v + u * D, b.lse[t], delta, h.scale, D);
      lane_fma(w, dq, p.ds, h.k + u * D, D);
      if (w.lane() == 0) {
        b.pair_key[j] = static_cast<uint64_t>(u);
        b.pair_query[j] = static_cast<int32_t>(t);
      }
    }
    lane_store<true>(w, dq, b.dq + t * D, D);
  }
};

// Key u: dk_u and dv_u over its queries in ascending t (after the sort and
// koff), then added to dk and dv.
template <int V>
struct BackwardKeyWarp {
  Head h;
  BackwardBuffers b;
  template <class W>
  SY_HD void operator()(const W& w, int64_t u) const {
    const int64_t D = h.D;
    float k[V], vv[V], dk[V] = {}, dv[V] = {};
    lane_load(w, k, h.k + u * D, D);
    lane_load(w, vv, h.v + u * D, D);
    for (int64_t j = b.koff[u]; j < b.koff[u + 1]; ++j) {
      const int64_t t = b.key_query[j];
      const PairGrad p = warp_pair_grad(w, k, vv, h.q + t * D, b.dout + t * D, b.lse[t], b.delta[t], h.scale, D);
      lane_fma(w, dv, p.a, b.dout + t * D, D);
      lane_fma(w, dk, p.ds, h.q + t * D, D);
    }
    lane_store<true>(w, dk, b.dk + u * D, D);
    lane_store<true>(w, dv, b.dv + u * D, D);
  }
};

// ---- the step sequences ----------------------------------------------------
// warps(n, f) calls f(w, i) for every i < n, each i on a warp w of its own
// (a kernel launch on the GPU; 32 host threads a warp in the host test), each
// step after the previous one has finished. V = lane_values(h.D).

template <int V, class Warps>
void forward_steps(const Warps& warps, const Head& h, float* o, float* lse) {
  warps(h.T, ForwardWarp<V>{h, o, lse});
}

// sort_and_starts(): the stable sort of (pair_key, pair_query) into
// (sorted_key, key_query) and koff from the sorted keys (a radix sort and
// segment_starts on the GPU; std::stable_sort and lower bounds on the host).
template <int V, class Warps, class SortAndStarts>
void backward_steps(const Warps& warps, const SortAndStarts& sort_and_starts, const Head& h, const BackwardBuffers& b) {
  warps(h.T, BackwardQueryWarp<V>{h, b});
  sort_and_starts();
  warps(h.T, BackwardKeyWarp<V>{h, b});
}

// ---- local key sets ---------------------------------------------------------

// Pairs of the queries before t under a causal window of w keys.
SY_HD inline int64_t local_offset(int64_t t, int64_t w) {
  return t <= w ? t * (t + 1) / 2 : w * (w + 1) / 2 + (t - w) * w;
}

// Query t < T writes off[t] and its keys; t = T writes off[T].
struct LocalKeys {
  int64_t T, w;
  int64_t* off;
  int32_t* idx;
  SY_HD void operator()(int64_t t) const {
    const int64_t p = local_offset(t, w);
    off[t] = p;
    if (t == T) return;
    const int64_t u0 = t - w + 1 > 0 ? t - w + 1 : 0;
    for (int64_t u = u0; u <= t; ++u) idx[p + (u - u0)] = static_cast<int32_t>(u);
  }
};

// ---- block top-k key sets --------------------------------------------------

// a . b with every product and sum rounded on its own, in index order: the
// CPU's loop bit for bit (the device would otherwise fuse them into FMAs), so
// the device chooses the CPU's blocks even where scores are close or tied.
SY_HD inline float dot_rn(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) {
#if defined(__CUDA_ARCH__)
    s = __fadd_rn(s, __fmul_rn(a[i], b[i]));
#else
    s += a[i] * b[i];
#endif
  }
  return s;
}

// Element i = b * D + d of the block means (nb, D): the CPU's sum in
// position order, then one division.
struct BlockMean {
  const float* k;  // (T, D)
  int64_t T, D, block;
  float* kmean;  // (nb, D)
  SY_HD void operator()(int64_t i) const {
    const int64_t b = i / D, d = i % D, u0 = b * block, u1 = u0 + block < T ? u0 + block : T;
    float s = 0.f;
    for (int64_t u = u0; u < u1; ++u) s += k[u * D + d];
    kmean[i] = s / static_cast<float>(u1 - u0);
  }
};

// Pairs of the queries before t: query s keeps min(topk, s / block) full
// earlier blocks and its own block up to s, so with own = t / block, r = t % block
//   off[t] = block^2 sum_{b < own} min(topk, b) + own block (block+1)/2
//            + r min(topk, own) block + r (r+1)/2.
SY_HD inline int64_t block_topk_offset(int64_t t, int64_t block, int64_t topk) {
  const int64_t own = t / block, r = t % block;
  const int64_t kept = own <= topk ? own * (own - 1) / 2 : topk * (topk - 1) / 2 + (own - topk) * topk;
  const int64_t k_own = own < topk ? own : topk;
  return block * block * kept + own * (block * (block + 1) / 2) + r * k_own * block + r * (r + 1) / 2;
}

// Query t < T writes off[t] and its keys (t = T writes off[T]): the top
// keep = min(topk, own) earlier blocks by q_t . mean(K_b), ties to the lower
// block (the order: score descending, block ascending; a NaN score ranks
// last, as -inf), in block order, then its own block up to t. Up to 16 kept
// blocks: one pass over the blocks with the best K (8 or 16) in registers,
// each block compared once with the K-th (a warp's 32 queries read each
// block's scores together), then the first keep sorted by block. More: keep
// rounds of "the best after the last pick" and a pass for the ranked blocks
// (keep + 1 reads of every score: the old way, ~9x the reads at top-8).
// Element i = b * T + t of the scores (nb, T): q_t . mean(K_b) by dot_rn.
// Block-major, so that consecutive queries (a warp of BlockTopkKeys) read
// one block's scores together. CUDA computes them in tiles
// (ops/cuda/sparse_attention.cu, block_scores_kernel: the same products and
// sums in the same order, so the same bits).
struct BlockScores {
  const float *q, *kmean;  // (T, D), (nb, D)
  int64_t T, D;
  float* scores;  // (nb, T)
  SY_HD void operator()(int64_t i) const {
    const int64_t b = i / T, t = i % T;
    scores[i] = dot_rn(q + t * D, kmean + b * D, D);
  }
};

struct BlockTopkKeys {
  const float* q;      // (T, D)
  const float* kmean;  // (nb, D)
  int64_t T, D, block, topk;
  int64_t* off;
  int32_t* idx;
  const float* scores = nullptr;  // (nb, T) BlockScores' (at least b < t / block), or null: computed here
  // A NaN score ranks last, as -inf (the CPU's rule): exactly keep blocks
  // fill the slots off[] reserved for them.
  SY_HD float score(const float* qt, int64_t t, int64_t b) const {
    const float s = scores ? scores[b * T + t] : dot_rn(qt, kmean + b * D, D);
    return s != s ? -INFINITY : s;
  }
  // (s, b) ranks before (s2, b2): score descending, block ascending.
  SY_HD static bool before(float s, int32_t b, float s2, int32_t b2) { return s > s2 || (s == s2 && b < b2); }
  SY_HD void write_block(int64_t& p, int64_t b) const {
    for (int64_t u = b * block; u < (b + 1) * block; ++u) idx[p++] = static_cast<int32_t>(u);
  }
  // The best K of blocks [0, own) in one pass: a list in rank order, every
  // index static (registers on a GPU), filled with sentinels that rank after
  // every block (-inf at block INT32_MAX: a real -inf, NaN's rank, still
  // beats them). Its first keep <= K entries are the top keep: written in
  // block order.
  template <int K>
  SY_HD void one_pass(const float* qt, int64_t t, int64_t own, int64_t keep, int64_t& p) const {
    float ls[K];
    int32_t lb[K];
#pragma unroll
    for (int j = 0; j < K; ++j) ls[j] = -INFINITY, lb[j] = INT32_MAX;
    for (int64_t b = 0; b < own; ++b) {
      float s = score(qt, t, b);
      int32_t bb = static_cast<int32_t>(b);
      if (!before(s, bb, ls[K - 1], lb[K - 1])) continue;  // (the common case once the list is full)
#pragma unroll
      for (int j = 0; j < K; ++j)  // insertion by swaps: the carried entry sinks to its place
        if (before(s, bb, ls[j], lb[j])) {
          const float ts = ls[j];
          const int32_t tb = lb[j];
          ls[j] = s, lb[j] = bb, s = ts, bb = tb;
        }
    }
#pragma unroll
    for (int i = 0; i < K; ++i)  // the first keep by block (a bubble sort, static indices)
#pragma unroll
      for (int j = 0; j + 1 < K - i; ++j)
        if (j + 1 < keep && lb[j] > lb[j + 1]) {
          const int32_t tb = lb[j];
          lb[j] = lb[j + 1], lb[j + 1] = tb;
        }
#pragma unroll
    for (int i = 0; i < K; ++i)
      if (i < keep) write_block(p, lb[i]);
  }
  // Any keep: keep rounds, each the best after the last pick, then every
  // block ranked at or before the last pick, in block order.
  SY_HD void rounds(const float* qt, int64_t t, int64_t own, int64_t keep, int64_t& p) const {
    float last = INFINITY;  // the last pick (score, block); before any pick: above everything
    int64_t last_b = -1;
    for (int64_t i = 0; i < keep; ++i) {
      float best = -INFINITY;
      int64_t best_b = -1;
      for (int64_t b = 0; b < own; ++b) {
        const float s = score(qt, t, b);
        const bool after_last = s < last || (s == last && b > last_b);
        if (after_last && (best_b < 0 || s > best)) best = s, best_b = b;  // ties: the lower b stays
      }
      last = best, last_b = best_b;
    }
    for (int64_t b = 0, taken = 0; b < own && taken < keep; ++b) {
      const float s = score(qt, t, b);
      if (s > last || (s == last && b <= last_b)) write_block(p, b), ++taken;
    }
  }
  SY_HD void operator()(int64_t t) const {
    int64_t p = block_topk_offset(t, block, topk);
    off[t] = p;
    if (t == T) return;
    const int64_t own = t / block, keep = own < topk ? own : topk;
    const float* qt = q + t * D;
    if (keep == 0)
      ;  // (topk 0, or the first block: its own keys only)
    else if (keep <= 8)
      one_pass<8>(qt, t, own, keep, p);
    else if (keep <= 16)
      one_pass<16>(qt, t, own, keep, p);
    else
      rounds(qt, t, own, keep, p);
    for (int64_t u = own * block; u <= t; ++u) idx[p++] = static_cast<int32_t>(u);
  }
};

}  // namespace sy::ops::sparse
