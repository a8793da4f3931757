#include "runtime/scaling_model.h"

#include <algorithm>
#include <cmath>

namespace sy {

double link_seconds(const StepTraffic& t, int N, const Link& L) {
  if (N <= 1) return 0;
  const double S = t.bytes_per_exchange, frac = (N - 1.0) / N;
  double a2a = 0;
  for (int e = 0; e < static_cast<int>(t.exchanges); ++e) {
    double s = L.alpha_s + S * frac / (L.busbw_gbs * 1e9);
    if (N > L.per_node)  // a node's ranks send (N - per_node)/N of their rows off the node
      s = std::max(s, L.alpha_s + L.per_node * S * (N - L.per_node) / N / (L.node_gbs * 1e9));
    a2a += s;
  }
  const double ar_gbs = N > L.per_node ? L.node_gbs / L.per_node : L.busbw_gbs;
  const double ar = (t.scattered ? 1.0 : 2.0) * ((N - 1) * L.alpha_s + frac * t.dense_bytes / (ar_gbs * 1e9));
  const double ag = t.gathered_bytes > 0 ? (N - 1) * L.alpha_s + frac * t.gathered_bytes / (ar_gbs * 1e9) : 0;
  return a2a + ar + ag;
}

double load_excess(const KeptShares& kept, int N) {
  double sum = 0;
  long n = 0;
  for (const auto& step : kept)
    for (const std::vector<double>& k : step) {
      const int E = static_cast<int>(k.size());
      int ep = 1;
      for (int d = 1; d <= std::min(N, E); ++d)
        if (E % d == 0) ep = d;
      double total = 0, most = 0;
      for (int r = 0; r < ep; ++r) {
        double K = 0;
        for (int e = r * (E / ep); e < (r + 1) * (E / ep); ++e) K += k[e];
        total += K, most = std::max(most, K);
      }
      if (total > 0) sum += ep * most / total - 1, ++n;
    }
  return n ? sum / n : 0;
}

}  // namespace sy
