#include "ops/routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace sy::ops {

int64_t ceil_capacity(double fraction, double n) {
  const double x = fraction * n;
  return static_cast<int64_t>(std::ceil(x - 1e-6 * std::fabs(x)));
}

void router_scores(std::vector<float>& probs, const float* logits, int64_t N, int64_t G, ScoreFn fn) {
  probs.resize(N * G);
  for (int64_t i = 0; i < N; ++i) {
    const float* l = logits + i * G;
    float* p = probs.data() + i * G;
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

namespace {

// Fills count/offset/slot from group[] visiting assignments in `order`;
// slots beyond `capacity` are dropped.
void assign_slots(Route& r, const std::vector<int64_t>& order) {
  r.count.assign(r.num_groups, 0);
  r.slot.assign(r.group.size(), -1);
  r.assigned = r.dropped = 0;
  for (int64_t a : order) {
    const int32_t g = r.group[a];
    if (g < 0) continue;
    ++r.assigned;
    if (r.count[g] < r.capacity)
      r.slot[a] = r.count[g]++;
    else
      ++r.dropped;
  }
  r.offset.assign(r.num_groups + 1, 0);
  for (int64_t g = 0; g < r.num_groups; ++g) r.offset[g + 1] = r.offset[g] + r.count[g];
}

// Indices 0..n-1 ordered by descending key, ties to the lower index.
std::vector<int64_t> argsort_desc(const std::vector<float>& key) {
  std::vector<int64_t> idx(key.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
  return idx;
}

}  // namespace

Route tokens_choose(const std::vector<float>& probs, int64_t N, int64_t G,
                    const TokensChooseParams& p) {
  SY_CHECK(p.k >= 1 && p.k <= G, "top_k = " << p.k << " with " << G << " groups");
  SY_CHECK(static_cast<int64_t>(probs.size()) == N * G, "router probs size " << probs.size());
  SY_CHECK(p.selection_bias.empty() || static_cast<int64_t>(p.selection_bias.size()) == G,
           "selection bias of " << p.selection_bias.size() << " for " << G << " groups");
  const int64_t k = p.k;
  Route r;
  r.num_items = N, r.k = k, r.num_groups = G;
  r.group.assign(N * k, -1);
  r.weight.assign(N * k, 0.f);
  SY_CHECK(!p.selection_keys || static_cast<int64_t>(p.selection_keys->size()) == N * G,
           "selection keys of " << p.selection_keys->size() << " for " << N << " x " << G);
  std::vector<float> sel(G);
  std::vector<int64_t> idx(G);
  std::vector<float> top_score(N);
  for (int64_t i = 0; i < N; ++i) {
    const float* pi = probs.data() + i * G;
    const float* key = p.selection_keys ? p.selection_keys->data() + i * G : pi;
    for (int64_t g = 0; g < G; ++g) sel[g] = key[g] + (p.selection_bias.empty() ? 0.f : p.selection_bias[g]);
    std::iota(idx.begin(), idx.end(), 0);
    // Top-k by selection score, ties to the lower group index.
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
      return sel[a] > sel[b] || (sel[a] == sel[b] && a < b);
    });
    float wsum = 0;
    for (int64_t j = 0; j < k; ++j) {
      r.group[i * k + j] = static_cast<int32_t>(idx[j]);
      r.weight[i * k + j] = pi[idx[j]];
      wsum += pi[idx[j]];
    }
    if (p.renormalize && wsum > 0)
      for (int64_t j = 0; j < k; ++j) r.weight[i * k + j] /= wsum;
    top_score[i] = pi[idx[0]];
  }
  // Visiting order: choice rank j outermost; items by position or by top score.
  std::vector<int64_t> items(N);
  std::iota(items.begin(), items.end(), 0);
  if (p.priority == SlotPriority::score) items = argsort_desc(top_score);
  std::vector<int64_t> order;
  order.reserve(N * k);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t i : items) order.push_back(i * k + j);

  if (p.dropless) {
    std::vector<int64_t> load(G, 0);
    for (int32_t g : r.group) ++load[g];
    r.capacity = std::max<int64_t>(1, *std::max_element(load.begin(), load.end()));
  } else {
    r.capacity = ceil_capacity(p.capacity_factor, static_cast<double>(N) * k / G);
  }
  assign_slots(r, order);
  return r;
}

Route groups_choose(const std::vector<float>& scores, int64_t N, int64_t G, int64_t capacity,
                    int64_t segment) {
  SY_CHECK(static_cast<int64_t>(scores.size()) == N * G, "scores size " << scores.size());
  SY_CHECK(capacity >= 0, "capacity " << capacity);
  const int64_t S = segment > 0 ? segment : N;
  SY_CHECK(N % std::max<int64_t>(S, 1) == 0, "groups_choose: " << N << " items in segments of " << S);
  const int64_t per_segment = std::min(capacity, S), segments = S > 0 ? N / S : 0;
  Route r;
  r.num_items = N, r.k = G, r.num_groups = G, r.capacity = per_segment * segments;
  r.group.assign(N * G, -1);
  r.weight.assign(N * G, 0.f);
  std::vector<float> col(S);
  for (int64_t s0 = 0; s0 < N; s0 += S)
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t i = 0; i < S; ++i) col[i] = scores[(s0 + i) * G + g];
      std::vector<int64_t> idx = argsort_desc(col);
      for (int64_t c = 0; c < per_segment; ++c) {
        const int64_t item = s0 + idx[c];
        r.group[item * G + g] = static_cast<int32_t>(g);
        r.weight[item * G + g] = col[idx[c]];
      }
    }
  // Slots in item (position) order; nothing is dropped by construction.
  std::vector<int64_t> order(N * G);
  std::iota(order.begin(), order.end(), 0);
  assign_slots(r, order);
  return r;
}

Route threshold_route(const std::vector<float>& scores, int64_t N, float tau) {
  Route r;
  r.num_items = N, r.k = 1, r.num_groups = 1, r.capacity = N;
  r.group.assign(N, -1);
  r.weight.assign(N, 0.f);
  for (int64_t i = 0; i < N; ++i)
    if (scores[i] > tau) r.group[i] = 0, r.weight[i] = scores[i];
  std::vector<int64_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  assign_slots(r, order);
  return r;
}

void route_weights_backward(std::vector<float>& dprobs, const std::vector<float>& dweight,
                            const std::vector<float>& probs, const Route& r, bool renormalized) {
  const int64_t N = r.num_items, k = r.k, G = r.num_groups;
  dprobs.resize(N * G, 0.f);
  for (int64_t i = 0; i < N; ++i) {
    const int64_t a0 = i * k;
    if (!renormalized) {
      for (int64_t j = 0; j < k; ++j)
        if (r.group[a0 + j] >= 0) dprobs[i * G + r.group[a0 + j]] += dweight[a0 + j];
      continue;
    }
    // w_j = p_j / S:  dp_j = dw_j / S - sum_l dw_l p_l / S^2
    float S = 0, dot = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (r.group[a0 + j] < 0) continue;
      const float pj = probs[i * G + r.group[a0 + j]];
      S += pj;
      dot += dweight[a0 + j] * pj;
    }
    if (S <= 0) continue;
    for (int64_t j = 0; j < k; ++j)
      if (r.group[a0 + j] >= 0) dprobs[i * G + r.group[a0 + j]] += dweight[a0 + j] / S - dot / (S * S);
  }
}

void router_scores_backward(std::vector<float>& dlogits, const std::vector<float>& dprobs,
                            const std::vector<float>& probs, int64_t N, int64_t G, ScoreFn fn) {
  dlogits.resize(N * G, 0.f);
  for (int64_t i = 0; i < N; ++i) {
    const float* p = probs.data() + i * G;
    const float* dp = dprobs.data() + i * G;
    float* dl = dlogits.data() + i * G;
    if (fn == ScoreFn::sigmoid) {
      for (int64_t g = 0; g < G; ++g) dl[g] += p[g] * (1.f - p[g]) * dp[g];
      continue;
    }
    float dot = 0;
    for (int64_t g = 0; g < G; ++g) dot += p[g] * dp[g];
    for (int64_t g = 0; g < G; ++g) dl[g] += p[g] * (dp[g] - dot);
  }
}

void update_balance_bias(std::vector<float>& bias, const std::vector<int64_t>& load, float rate) {
  const double mean = std::accumulate(load.begin(), load.end(), 0.0) / load.size();
  for (size_t g = 0; g < bias.size(); ++g) {
    const double e = mean - static_cast<double>(load[g]);
    bias[g] += rate * static_cast<float>((e > 0) - (e < 0));
  }
}

}  // namespace sy::ops
