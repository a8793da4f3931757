// What the benchmarks (bench_ops, bench_attention) share: the host clock,
// the #wrong count against the CPU reference, and a case's op profile.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/device_runtime.h"
#include "core/op_profile.h"
#include "core/tensor.h"
#include "runtime/op_profile_report.h"
#include "ops/elementwise.h"
#include "ops/random.h"

namespace sy::bench {

// Where a case's time goes, op by op and part by part (core/op_profile.h:
// CUDA events on a device, else the host clock): `steps` untimed runs of
// run(), ctx.profiler set for them only, whatever run() throws. The JSON
// goes to profiles[name], the table to text (a line saying why where it
// could not run).
inline void profile_case(Ctx& ctx, bool device, const std::string& name, int steps, const std::function<void()>& run,
                         nlohmann::json& profiles, std::string& text) {
  try {
    OpProfiler prof(device ? cuda_event_clock(ctx.stream) : host_clock());
    struct Attach {
      Ctx& c;
      ~Attach() { c.profiler = nullptr; }
    } attach{ctx};
    ctx.profiler = &prof;
    for (int i = 0; i < steps; ++i) {
      prof.begin_step();
      run();
      prof.end_step();
    }
    profiles[name] = op_profile_json(prof);
    text += "== " + name + ": " + op_profile_table(prof);
  } catch (const std::exception& e) {
    text += "== " + name + ": not profiled (" + std::string(e.what()).substr(0, 100) + ")\n";
  }
}

inline double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Elements of got (any device, f32 or bf16) off want (host f32) by more than
// rtol relative, with an absolute floor of rtol * rms(want).
inline int64_t count_wrong(const Tensor& got_any, const Tensor& want, double rtol) {
  Tensor got = got_any.device().is_cpu() ? got_any : got_any.to(host_ctx());
  if (got.dtype() == DType::bf16) got = got.to(DType::f32);
  double rms = 0;
  for (int64_t i = 0; i < want.numel(); ++i) rms += double(want.f32()[i]) * want.f32()[i];
  rms = std::sqrt(rms / std::max<int64_t>(1, want.numel()));
  int64_t wrong = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double a = got.f32()[i], b = want.f32()[i];
    if (!(std::fabs(a - b) <= rtol * (std::fabs(b) + rms))) ++wrong;
  }
  return wrong;
}

// A bf16 (n, n) matrix of normal values drawn on ctx (Philox): a GEMM ceiling
// on random operands (constant ones run at clocks real data does not reach).
// Ordered on ctx's stream, as the GEMMs that read it.
inline Tensor random_bf16_matrix(Ctx& ctx, int64_t n, uint64_t seed) {
  Tensor f = Tensor::empty({n, n}, DType::f32, ctx), b = Tensor::empty({n, n}, DType::bf16, ctx);
  ops::random_normal(ctx, f, RandomKey{seed, 0, 0, 0}, 1.f);
  ops::to_bf16(ctx, b, f);
  return b;
}

// Median seconds a call of f takes queued behind the calls before it:
// `reps` calls back to back between two events on ctx's stream, the time
// over reps, `iters` times. The host queues the next call while the device
// runs this one, as in a training step, where one call timed alone also
// holds the device's wait for the host to launch it (a few microseconds:
// most of a 10 us kernel's figure). bench_ops' queued_seconds,
// bench_attention's small one-part rows.
inline double time_queued(Ctx& ctx, const std::function<void()>& f, int reps, int iters) {
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    EventTimer timer(ctx.stream);
    timer.start();
    for (int r = 0; r < reps; ++r) f();
    t.push_back(timer.stop_ms() / 1e3 / reps);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace sy::bench
