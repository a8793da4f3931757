#include "runtime/op_profile_report.h"

#include <algorithm>
#include <cstdio>

namespace sy {

namespace {
double per_step(double v, int64_t steps) { return steps > 0 ? v / steps : 0; }
double inside_ops_ms(const OpProfiler& p) {
  double ms = 0;
  for (const OpProfiler::Row& r : p.rows()) ms += r.ms;
  return ms;
}
}  // namespace

std::string op_profile_table(const OpProfiler& p) {
  const int64_t n = p.steps();
  const double step = per_step(p.step_ms(), n), inside = per_step(inside_ops_ms(p), n);
  auto share = [&](double ms) { return step > 0 ? 100.0 * ms / step : 0.0; };
  std::string out;
  char line[192];
  std::snprintf(line, sizeof line, "op profile: %lld steps of %.2f ms (%s; an op's interval holds the ops it calls)\n",
                static_cast<long long>(n), step, p.clock_name());
  out += line;
  // host ms: the host's own time inside the calls; waits: its waits for the
  // device there (core/op_profile.h says how to read them beside ms).
  std::snprintf(line, sizeof line, "%-36s %10s %10s %7s %10s %7s\n", "op", "calls/step", "ms/step", "share",
                "host ms", "waits");
  out += line;
  for (const OpProfiler::Row& r : p.rows()) {
    std::snprintf(line, sizeof line, "%-36s %10.1f %10.3f %6.1f%% %10.3f %7.1f\n", r.op.c_str(), per_step(r.calls, n),
                  per_step(r.ms, n), share(per_step(r.ms, n)), per_step(r.host_ms, n), per_step(r.waits, n));
    out += line;
  }
  // On a device the ops' intervals may overlap host time, so the rest can be
  // below zero only by timer noise; it is shown as it is.
  std::snprintf(line, sizeof line, "%-36s %10s %10.3f %6.1f%%\n", "(between ops: gaps, host work, waits)", "",
                step - inside, share(step - inside));
  out += line;
  const std::vector<OpProfiler::Row> parts = p.parts();
  if (!parts.empty())
    out += "parts of the ops above (inside their op's time, not added again):\n" +
           std::string("  calls/step    ms/step   share    host ms   waits  op > part\n");
  for (const OpProfiler::Row& r : parts) {  // (the name last: a path may be long)
    std::snprintf(line, sizeof line, "  %10.1f %10.3f %6.1f%% %10.3f %7.1f  ", per_step(r.calls, n), per_step(r.ms, n),
                  share(per_step(r.ms, n)), per_step(r.host_ms, n), per_step(r.waits, n));
    out += line + r.op + "\n";
  }
  return out;
}

nlohmann::json op_profile_json(const OpProfiler& p) {
  const int64_t n = p.steps();
  const double step = per_step(p.step_ms(), n);
  // Rows under `key` ("op" or "part"), per profiled step.
  auto table = [&](const std::vector<OpProfiler::Row>& rows, const char* key) {
    nlohmann::json t = nlohmann::json::array();
    for (const OpProfiler::Row& r : rows)
      t.push_back({{key, r.op},
                   {"calls_per_step", per_step(r.calls, n)},
                   {"ms_per_step", per_step(r.ms, n)},
                   {"host_ms_per_step", per_step(r.host_ms, n)},
                   {"host_waits_per_step", per_step(r.waits, n)},
                   {"share_of_step", step > 0 ? per_step(r.ms, n) / step : 0}});
    return t;
  };
  return {{"clock", p.clock_name()},
          {"steps", n},
          {"step_ms", step},
          {"inside_ops_ms", per_step(inside_ops_ms(p), n)},
          {"ops", table(p.rows(), "op")},
          {"parts", table(p.parts(), "part")}};
}

}  // namespace sy
