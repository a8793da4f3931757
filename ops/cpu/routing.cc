#include "ops/routing.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace sy::ops::cpu {

void router_scores(Ctx&, Tensor& probs, const Tensor& logits, ScoreFn fn) {
  const int64_t N = logits.dim(0), G = logits.dim(1);
  for (int64_t i = 0; i < N; ++i) {
    const float* l = logits.f32() + i * G;
    float* p = probs.f32() + i * G;
    if (fn == ScoreFn::sigmoid) {
      for (int64_t g = 0; g < G; ++g) p[g] = 1.f / (1.f + std::exp(-l[g]));
      continue;
    }
    const float mx = *std::max_element(l, l + G);
    float sum = 0;
    for (int64_t g = 0; g < G; ++g) sum += (p[g] = std::exp(l[g] - mx));
    for (int64_t g = 0; g < G; ++g) p[g] /= sum;
  }
}

void router_scores_backward(Ctx&, Tensor& dlogits, const Tensor& dprobs, const Tensor& probs, ScoreFn fn) {
  const int64_t N = probs.dim(0), G = probs.dim(1);
  for (int64_t i = 0; i < N; ++i) {
    const float* p = probs.f32() + i * G;
    const float* dp = dprobs.f32() + i * G;
    float* dl = dlogits.f32() + i * G;
    if (fn == ScoreFn::sigmoid) {
      for (int64_t g = 0; g < G; ++g) dl[g] += p[g] * (1.f - p[g]) * dp[g];
      continue;
    }
    float dot = 0;
    for (int64_t g = 0; g < G; ++g) dot += p[g] * dp[g];
    for (int64_t g = 0; g < G; ++g) dl[g] += p[g] * (dp[g] - dot);
  }
}

void normalize_scores(Ctx&, Tensor& q_t, const Tensor& probs) {
  const int64_t N = probs.dim(0), G = probs.dim(1);
  for (int64_t i = 0; i < N; ++i) {
    const float* p = probs.f32() + i * G;
    float* q = q_t.f32() + i * G;
    float s = 0;
    for (int64_t g = 0; g < G; ++g) s += p[g];
    for (int64_t g = 0; g < G; ++g) q[g] = s > 0 ? p[g] / s : 0.f;
  }
}

void normalize_scores_backward(Ctx&, Tensor& dprobs, const Tensor& dq_t, const Tensor& probs) {
  const int64_t N = probs.dim(0), G = probs.dim(1);
  for (int64_t i = 0; i < N; ++i) {
    const float* p = probs.f32() + i * G;
    const float* dq = dq_t.f32() + i * G;
    float* dp = dprobs.f32() + i * G;
    float s = 0, dot = 0;
    for (int64_t g = 0; g < G; ++g) s += p[g];
    if (!(s > 0)) continue;
    for (int64_t g = 0; g < G; ++g) dot += dq[g] * (p[g] / s);
    for (int64_t g = 0; g < G; ++g) dp[g] += (dq[g] - dot) / s;
  }
}

namespace {

// A route of N items x k assignments over G groups, every assignment unused.
void init_route(Ctx& ctx, Route& r, int64_t N, int64_t k, int64_t G) {
  r.num_items = N, r.k = k, r.num_groups = G;
  r.padded = false;
  r.group = Tensor::empty({N * k}, DType::i32, ctx);
  r.weight = Tensor::zeros({N * k}, DType::f32, ctx);
  r.slot = Tensor::empty({N * k}, DType::i32, ctx);
  r.count = Tensor::empty({G}, DType::i32, ctx);
  r.offset = Tensor::empty({G + 1}, DType::i32, ctx);
  std::fill_n(r.group.data<int32_t>(), N * k, -1);
}

// Fills slot/count/offset visiting assignments in `order`; slots beyond
// `capacity` are dropped.
void assign_slots(Route& r, const std::vector<int64_t>& order) {
  const int32_t* group = r.group.data<int32_t>();
  int32_t* slot = r.slot.data<int32_t>();
  int32_t* count = r.count.data<int32_t>();
  std::fill_n(count, r.num_groups, 0);
  std::fill_n(slot, r.assignments(), -1);
  r.assigned = r.dropped = r.budget_dropped = 0;
  for (int64_t a : order) {
    const int32_t g = group[a];
    if (g < 0) continue;
    ++r.assigned;
    if (count[g] < r.capacity)
      slot[a] = count[g]++;
    else
      ++r.dropped;
  }
  int32_t* offset = r.offset.data<int32_t>();
  offset[0] = 0;
  for (int64_t g = 0; g < r.num_groups; ++g) offset[g + 1] = offset[g] + count[g];
  r.host_offset.assign(offset, offset + r.num_groups + 1);
}

// A score as the orders below rank it: NaN as -inf (last; among equals by
// position), so every comparison is a strict weak order (NaN's is not, and
// std::sort and partial_sort need one) and the CUDA sorts' keys agree
// (ops/cuda/host_device.h's nan_last).
float nan_last(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }

// Indices 0..n-1 ordered by descending key (nan_last), ties to the lower index.
std::vector<int64_t> argsort_desc(const std::vector<float>& key) {
  std::vector<int64_t> idx(key.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return nan_last(key[a]) > nan_last(key[b]); });
  return idx;
}

// Policy 1's choice: each item's top-k groups (group, weight: N*k) and the
// p of its first choice (top_score: N, or null), from probs (N, G).
void choose_top_k(const Tensor& probs, const TokensChooseParams& p, int32_t* group, float* weight,
                  float* top_score) {
  SY_CHECK(!p.group_limit.on(), "the CPU top-k got a group limit: ops/routing.cc applies it (limit_groups) first");
  const int64_t N = probs.dim(0), G = probs.dim(1), k = p.k;
  const float* bias = p.selection_bias ? p.selection_bias->f32() : nullptr;
  std::vector<float> sel(G);
  std::vector<int64_t> idx(G);
  for (int64_t i = 0; i < N; ++i) {
    const float* pi = probs.f32() + i * G;
    const float* key = p.selection_keys ? p.selection_keys->f32() + i * G : pi;
    // A NaN ranks last, as -inf: the order stays a strict weak one (NaN
    // would break partial_sort's) and a NaN row still gets k groups in range
    // (the step is then skipped on its NaN loss).
    for (int64_t g = 0; g < G; ++g) {
      sel[g] = key[g] + (bias ? bias[g] : 0.f);
      if (std::isnan(sel[g])) sel[g] = -std::numeric_limits<float>::infinity();
    }
    std::iota(idx.begin(), idx.end(), 0);
    // Top-k by selection score, ties to the lower group index.
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
      return sel[a] > sel[b] || (sel[a] == sel[b] && a < b);
    });
    float wsum = 0;
    const int64_t base = p.segment > 0 ? i / p.segment * G : 0;
    for (int64_t j = 0; j < k; ++j) {
      group[i * k + j] = static_cast<int32_t>(base + idx[j]);
      weight[i * k + j] = pi[idx[j]];
      wsum += pi[idx[j]];
    }
    if (p.renormalize && wsum > 0)
      for (int64_t j = 0; j < k; ++j) weight[i * k + j] /= wsum;
    if (top_score) top_score[i] = pi[idx[0]];
  }
}

}  // namespace

// The reference is the composition (ops/routing.h).
// The gating's probabilities: the caller's, or scratch where it keeps none.
static Tensor gate_probs(Ctx& ctx, Tensor& probs, const Tensor& logits, ScoreFn fn) {
  Tensor p = probs.defined() ? probs : Tensor::empty(logits.shape(), DType::f32, ctx);
  cpu::router_scores(ctx, p, logits, fn);
  return p;
}

void tokens_choose_logits(Ctx& ctx, Route& r, Tensor& probs, const Tensor& logits, ScoreFn fn,
                          const TokensChooseParams& p) {
  cpu::tokens_choose(ctx, r, gate_probs(ctx, probs, logits, fn), p);
}

void tokens_gate(Ctx& ctx, Tensor& group, Tensor& weight, Tensor& probs, const Tensor& logits, ScoreFn fn,
                 const TokensChooseParams& p) {
  const Tensor scores = gate_probs(ctx, probs, logits, fn);
  choose_top_k(scores, p, group.data<int32_t>(), weight.f32(), /*top_score=*/nullptr);
}

void tokens_choose(Ctx& ctx, Route& r, const Tensor& probs, const TokensChooseParams& p) {
  const int64_t N = probs.dim(0), G = probs.dim(1), k = p.k;
  const int64_t run = p.segment > 0 ? p.segment : N, groups = run > 0 ? N / run * G : G;  // runs' own groups
  init_route(ctx, r, N, k, groups);
  int32_t* group = r.group.data<int32_t>();
  std::vector<float> top_score(N);
  choose_top_k(probs, p, group, r.weight.f32(), top_score.data());
  // Visiting order: choice rank j outermost; items by position, by top score
  // or by the priority keys. TOKEN: items outermost, by position (the
  // assignments in index order, a = i*k + j).
  std::vector<int64_t> items(N);
  std::iota(items.begin(), items.end(), 0);
  if (p.priority == SlotPriority::score)
    items = argsort_desc(p.priority_keys ? p.priority_keys->to_vector<float>() : top_score);
  std::vector<int64_t> order;
  order.reserve(N * k);
  if (p.priority == SlotPriority::token_order)
    for (int64_t a = 0; a < N * k; ++a) order.push_back(a);
  else
    for (int64_t j = 0; j < k; ++j)
      for (int64_t i : items) order.push_back(i * k + j);

  if (p.dropless) {
    std::vector<int64_t> load(groups, 0);
    for (int64_t a = 0; a < N * k; ++a) ++load[group[a]];
    r.capacity = std::max<int64_t>(1, groups > 0 ? *std::max_element(load.begin(), load.end()) : 0);
  } else {
    r.capacity = tokens_choose_capacity(p, run, G);
  }
  assign_slots(r, order);
  if (p.padded) {
    set_padded_host_part(r);
    std::copy(r.host_offset.begin(), r.host_offset.end(), r.offset.data<int32_t>());
  }
}

void groups_choose(Ctx& ctx, Route& r, const Tensor& scores, int64_t capacity, int64_t segment, bool own_groups) {
  const int64_t N = scores.dim(0), G = scores.dim(1);
  const int64_t S = segment > 0 ? segment : N;
  const int64_t per_segment = std::min(capacity, S), segments = S > 0 ? N / S : 0;
  own_groups = own_groups && segment > 0;
  init_route(ctx, r, N, G, own_groups ? segments * G : G);
  r.capacity = own_groups ? per_segment : per_segment * segments;
  int32_t* group = r.group.data<int32_t>();
  float* weight = r.weight.f32();
  const float* sc = scores.f32();
  std::vector<float> col(S);
  std::vector<int64_t> idx(S);
  for (int64_t s0 = 0; s0 < N; s0 += S)
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t i = 0; i < S; ++i) col[i] = nan_last(sc[(s0 + i) * G + g]);
      // The first per_segment of a stable descending sort (ties to the earlier
      // item), found by a partial sort: S log C instead of S log S per group,
      // which matters for routed attention's balanced mode (K groups of T).
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + per_segment, idx.end(), [&](int64_t a, int64_t b) {
        return col[a] > col[b] || (col[a] == col[b] && a < b);
      });
      for (int64_t c = 0; c < per_segment; ++c) {
        const int64_t item = s0 + idx[c];
        group[item * G + g] = static_cast<int32_t>(own_groups ? s0 / S * G + g : g);
        weight[item * G + g] = sc[item * G + g];  // (a NaN kept as it is)
      }
    }
  // Slots in item (position) order; nothing is dropped by construction.
  std::vector<int64_t> order(N * G);
  std::iota(order.begin(), order.end(), 0);
  assign_slots(r, order);
}

void threshold_route(Ctx& ctx, Route& r, const Tensor& scores, float tau) {
  const int64_t N = scores.dim(0);
  init_route(ctx, r, N, 1, 1);
  r.capacity = N;
  int32_t* group = r.group.data<int32_t>();
  float* weight = r.weight.f32();
  const float* sc = scores.f32();
  for (int64_t i = 0; i < N; ++i)
    if (sc[i] > tau) group[i] = 0, weight[i] = sc[i];
  std::vector<int64_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  assign_slots(r, order);
}

void apply_budget(Ctx&, Route& r, const Tensor& scores_t, const BudgetParams& p) {
  const int64_t N = r.num_items, k = r.k, G = r.num_groups, n = N * k;
  const int32_t* group = r.group.data<int32_t>();
  int32_t* slot = r.slot.data<int32_t>();
  const float* scores = scores_t.f32();
  auto kept = [&](int64_t a) { return group[a] >= 0 && slot[a] >= 0; };
  auto cost = [&](int64_t a) { return static_cast<double>(p.cost[group[a]]); };
  auto score = [&](int64_t a) { return scores[(a / k) * G + group[a]]; };
  // Drop priority: lowest score first, ties to the later assignment.
  auto drops_first = [&](int64_t a, int64_t b) { return score(a) < score(b) || (score(a) == score(b) && a > b); };
  // spent + the kept costs of [a0, a1), added one by one in assignment order:
  // the sum the bound is stated for (ops/routing.h).
  auto chain = [&](int64_t a0, int64_t a1, double spent) {
    for (int64_t a = a0; a < a1; ++a)
      if (kept(a)) spent += cost(a);
    return spent;
  };
  int64_t dropped = 0;
  // Drops kept assignments of [a0, a1) in priority order until
  // chain(a0, a1, spent) <= allowed; returns that chain.
  auto fit = [&](int64_t a0, int64_t a1, double spent, double allowed) {
    double total = chain(a0, a1, spent);
    if (total <= allowed) return total;
    std::vector<int64_t> order;
    for (int64_t a = a0; a < a1; ++a)
      if (kept(a) && cost(a) > 0) order.push_back(a);
    std::sort(order.begin(), order.end(), drops_first);
    double running = total;  // updated by subtraction; confirmed exactly before stopping
    const double slack = 1e-9 * (1.0 + std::fabs(allowed));
    for (int64_t a : order) {
      slot[a] = -2, ++dropped;
      running -= cost(a);
      if (running <= allowed + slack) {
        running = total = chain(a0, a1, spent);
        if (total <= allowed) break;
      }
    }
    return chain(a0, a1, spent);
  };
  if (!p.causal) {
    fit(0, n, 0.0, p.budget * static_cast<double>(N));
  } else {
    const int64_t S = p.segment > 0 ? p.segment : N;
    for (int64_t s0 = 0; s0 < N; s0 += S) {
      double spent = 0;
      for (int64_t t = 0; t < S; ++t) {
        const int64_t i = s0 + t;
        spent = fit(i * k, (i + 1) * k, spent, p.budget * static_cast<double>(t + 1));
      }
    }
  }
  if (dropped == 0) return;
  // Survivors keep their order within each group; slots 0..count-1 again.
  int32_t* count = r.count.data<int32_t>();
  std::vector<std::vector<int64_t>> by_slot(G);
  for (int64_t g = 0; g < G; ++g) by_slot[g].assign(count[g], -1);
  for (int64_t a = 0; a < n; ++a)
    if (kept(a)) by_slot[group[a]][slot[a]] = a;
  for (int64_t g = 0; g < G; ++g) {
    int32_t c = 0;
    for (int64_t a : by_slot[g])
      if (a >= 0) slot[a] = c++;
    count[g] = c;
  }
  int32_t* offset = r.offset.data<int32_t>();
  offset[0] = 0;
  for (int64_t g = 0; g < G; ++g) offset[g + 1] = offset[g] + count[g];
  r.host_offset.assign(offset, offset + G + 1);
  r.budget_dropped += dropped;
}

void pad_to_largest(Ctx&, Route& r, int64_t multiple) {
  set_largest_padded_host_part(r, multiple);
  std::copy(r.host_offset.begin(), r.host_offset.end(), r.offset.data<int32_t>());
}

void route_weights_backward(Ctx&, Tensor& dprobs_t, const Tensor& dweight_t, const Tensor& probs_t,
                            const Route& r, bool renormalized) {
  const int64_t N = r.num_items, k = r.k, G = r.num_groups;
  const int32_t* group = r.group.data<int32_t>();
  const float* dweight = dweight_t.f32();
  const float* probs = probs_t.f32();
  float* dprobs = dprobs_t.f32();
  for (int64_t i = 0; i < N; ++i) {
    const int64_t a0 = i * k;
    if (!renormalized) {
      for (int64_t j = 0; j < k; ++j)
        if (group[a0 + j] >= 0) dprobs[i * G + group[a0 + j]] += dweight[a0 + j];
      continue;
    }
    // w_j = p_j / S:  dp_j = dw_j / S - sum_l dw_l p_l / S^2
    float S = 0, dot = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (group[a0 + j] < 0) continue;
      const float pj = probs[i * G + group[a0 + j]];
      S += pj;
      dot += dweight[a0 + j] * pj;
    }
    if (S <= 0) continue;
    for (int64_t j = 0; j < k; ++j)
      if (group[a0 + j] >= 0) dprobs[i * G + group[a0 + j]] += dweight[a0 + j] / S - dot / (S * S);
  }
}

void update_balance_bias(Ctx&, Tensor& bias_t, const Tensor& load_t, float rate) {
  float* bias = bias_t.f32();
  const double* rows = load_t.data<double>();
  const int64_t G = bias_t.numel(), M = G > 0 ? load_t.numel() / G : 0;
  if (G == 0) return;
  std::vector<double> load(G, 0.0);  // the step's load: the rows' sum, in row order
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) load[g] += rows[m * G + g];
  const double mean = std::accumulate(load.begin(), load.end(), 0.0) / G;
  for (int64_t g = 0; g < G; ++g) {
    const double e = mean - load[g];
    bias[g] += rate * static_cast<float>((e > 0) - (e < 0));
  }
}

}  // namespace sy::ops::cpu
