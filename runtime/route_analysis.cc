#include "runtime/route_analysis.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "core/error.h"

namespace sy {

Contingency::Contingency(int64_t X, int64_t E) : X_(X), E_(E), cell_(X * E, 0), row_(X, 0), col_(E, 0) {
  SY_CHECK(X > 0 && E > 0, "a contingency table needs rows and columns, got " << X << " x " << E);
}

void Contingency::add(int64_t x, int64_t e) {
  SY_CHECK(x >= 0 && x < X_ && e >= 0 && e < E_, "pair (" << x << ", " << e << ") outside " << X_ << " x " << E_);
  ++cell_[x * E_ + e], ++row_[x], ++col_[e], ++n_;
}

double Contingency::entropy_e() const {
  double h = 0;
  for (int64_t c : col_)
    if (c > 0) h -= static_cast<double>(c) / n_ * std::log(static_cast<double>(c) / n_);
  return h;
}

double Contingency::mutual_information() const {
  double mi = 0;
  for (int64_t x = 0; x < X_; ++x)
    for (int64_t e = 0; e < E_; ++e) {
      const double c = static_cast<double>(cell_[x * E_ + e]);
      if (c > 0) mi += c / n_ * std::log(c * n_ / (static_cast<double>(row_[x]) * col_[e]));
    }
  return std::max(0.0, mi);  // (>= 0 exactly; rounding may leave -1e-17)
}

double Contingency::miller_madow_bias() const {
  if (n_ == 0) return 0;
  auto nonzero = [](const std::vector<int64_t>& v) {
    return static_cast<double>(std::count_if(v.begin(), v.end(), [](int64_t c) { return c > 0; }));
  };
  return (nonzero(cell_) - nonzero(row_) - nonzero(col_) + 1) / (2.0 * n_);
}

double Contingency::uncertainty_coefficient() const {
  const double h = entropy_e();
  if (h <= 0) return 0;
  return std::clamp((mutual_information() - miller_madow_bias()) / h, 0.0, 1.0);
}

LayerRouting analyse_layer(const RoutingSample& s, int64_t E, const std::vector<int32_t>& first,
                           const std::vector<uint8_t>& first_kept, const std::vector<uint8_t>& served,
                           const std::vector<int32_t>& previous,
                           int64_t previous_experts, const std::vector<int32_t>& compared, int top) {
  const int64_t N = static_cast<int64_t>(first.size());
  SY_CHECK(s.vocab > 0 && s.seq_len > 0, "route analysis: vocabulary " << s.vocab << ", sequence length " << s.seq_len);
  SY_CHECK(static_cast<int64_t>(s.ids.size()) == N && static_cast<int64_t>(s.position.size()) == N &&
               static_cast<int64_t>(served.size()) == N && static_cast<int64_t>(first_kept.size()) == N,
           "route analysis: " << N << " first choices for " << s.ids.size() << " ids, " << s.position.size()
                              << " positions, " << first_kept.size() << " kept and " << served.size()
                              << " served flags");
  SY_CHECK(previous.empty() || static_cast<int64_t>(previous.size()) == N, "route analysis: previous layer's size");
  SY_CHECK(compared.empty() || static_cast<int64_t>(compared.size()) == N, "route analysis: compared run's size");
  constexpr int kBuckets = 8;
  Contingency by_id(s.vocab, E), by_pos(kBuckets, E);
  std::unique_ptr<Contingency> by_prev, by_cmp;
  if (!previous.empty()) by_prev = std::make_unique<Contingency>(previous_experts, E);
  if (!compared.empty()) by_cmp = std::make_unique<Contingency>(E, E);
  LayerRouting r;
  r.tokens = N;
  r.experts.resize(E);
  std::vector<int64_t> kept(E, 0);
  int64_t served_n = 0, changed = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t e = first[i];
    by_id.add(s.ids[i], e);
    by_pos.add(s.position[i] * kBuckets / s.seq_len, e);
    if (by_prev) by_prev->add(previous[i], e);
    served_n += served[i] != 0;
    kept[e] += first_kept[i] != 0;
    if (by_cmp) {
      changed += compared[i] != first[i];
      by_cmp->add(compared[i], e);
    }
  }
  r.served = N ? static_cast<double>(served_n) / N : 0;
  r.by_id = by_id.uncertainty_coefficient();
  r.by_position = by_pos.uncertainty_coefficient();
  if (by_prev) r.by_previous = by_prev->uncertainty_coefficient();
  if (by_cmp) {
    r.changed = N ? static_cast<double>(changed) / N : 0;
    r.by_compared = by_cmp->uncertainty_coefficient();
  }
  std::vector<int32_t> ids(s.vocab);
  for (int64_t e = 0; e < E; ++e) {
    ExpertProfile& p = r.experts[e];
    int64_t n = 0;
    for (int64_t x = 0; x < s.vocab; ++x) n += by_id.count(x, e);
    p.share = N ? static_cast<double>(n) / N : 0;
    p.kept = n ? static_cast<double>(kept[e]) / n : 0;
    std::iota(ids.begin(), ids.end(), 0);
    const int64_t k = std::min<int64_t>(top, s.vocab);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      const int64_t ca = by_id.count(a, e), cb = by_id.count(b, e);
      return ca > cb || (ca == cb && a < b);
    });
    for (int64_t j = 0; j < k && by_id.count(ids[j], e) > 0; ++j)
      p.top_ids.push_back({ids[j], static_cast<double>(by_id.count(ids[j], e)) / n});
  }
  return r;
}

DepthRouting analyse_depth(const RoutingSample& s, const std::vector<uint8_t>& processed,
                           const std::vector<uint8_t>& compared, int top, int64_t min_count) {
  // A choice of two groups, 1 processed and 0 passed: the layer figures.
  auto as_choice = [](const std::vector<uint8_t>& v) {
    std::vector<int32_t> c(v.size());
    for (size_t i = 0; i < v.size(); ++i) c[i] = v[i] != 0;
    return c;
  };
  const std::vector<int32_t> choice = as_choice(processed);
  const LayerRouting l = analyse_layer(s, 2, choice, processed, processed, {}, 0, as_choice(compared), 0);
  DepthRouting d;
  d.tokens = l.tokens;
  d.processed = l.experts[1].share;
  d.by_id = l.by_id;
  d.by_position = l.by_position;
  d.changed = l.changed;
  std::vector<int64_t> seen(s.vocab, 0), kept(s.vocab, 0);
  for (size_t i = 0; i < choice.size(); ++i) ++seen[s.ids[i]], kept[s.ids[i]] += choice[i];
  std::vector<std::pair<int32_t, double>> rate;  // (id, share processed) of the ids seen often enough
  for (int64_t x = 0; x < s.vocab; ++x)
    if (seen[x] >= min_count) rate.push_back({static_cast<int32_t>(x), static_cast<double>(kept[x]) / seen[x]});
  auto list = [&](bool high) {
    std::vector<std::pair<int32_t, double>> r = rate;
    std::stable_sort(r.begin(), r.end(),
                     [&](const auto& a, const auto& b) { return high ? a.second > b.second : a.second < b.second; });
    r.resize(std::min<size_t>(r.size(), static_cast<size_t>(std::max(0, top))));
    return r;
  };
  d.most_processed = list(true);
  d.most_passed = list(false);
  return d;
}

}  // namespace sy
