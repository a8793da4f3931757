// What the benchmarks (bench_ops, bench_attention) share: the host clock and
// the #wrong count against the CPU reference.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>

#include "core/tensor.h"
#include "ops/elementwise.h"
#include "ops/random.h"

namespace sy::bench {

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

}  // namespace sy::bench
