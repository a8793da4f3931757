// The CPU ops rewritten for speed (issue 16, slice 3) against the scalar
// loops they replaced, kept here verbatim as reference functions: on random
// inputs of odd and round sizes, every output of the op through its entry
// point within 1e-5 relative L2 of the old loop's. Accumulating outputs are
// checked from zero (the increment alone) and from the same random values in
// both (that they accumulate).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/rng.h"
#include "grad_check.h"
#include "ops/cpu/vec_math.h"
#include "ops/gelu.h"

namespace sy {
namespace {

using testing::randn;
using testing::zeros;

constexpr double kRelL2 = 1e-5;

Tensor copy_of(const Tensor& t) { return t.clone(host_ctx()); }

// ||got - want|| / ||want||, reported with the worst element on failure.
void expect_close(const std::string& what, const Tensor& got, const Tensor& want) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  double num = 0, den = 0, worst = -1;
  int64_t worst_i = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.f32()[i], w = want.f32()[i], d = std::fabs(g - w);
    num += d * d;
    den += w * w;
    if (d > worst) worst = d, worst_i = i;
  }
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  EXPECT_LE(rel, kRelL2) << what << ": relative L2 " << rel << "; worst element " << worst_i << ": "
                         << got.f32()[worst_i] << " vs " << want.f32()[worst_i];
  std::printf("  %-52s relative L2 %.2e\n", what.c_str(), rel);
}

// ---- The scalar loops as they were before the rewrite. ----

namespace old {

constexpr float kS2Pi = 0.7978845608028654f;
constexpr float kC = 0.044715f;

void gelu_forward(Tensor& y, const Tensor& x) {
  const float* xp = x.f32();
  float* yp = y.f32();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = xp[i];
    yp[i] = 0.5f * v * (1.f + std::tanh(kS2Pi * (v + kC * v * v * v)));
  }
}

void gelu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
  const float* xp = x.f32();
  const float* g = dy.f32();
  float* d = dx.f32();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = xp[i];
    const float t = std::tanh(kS2Pi * (v + kC * v * v * v));
    const float dd = 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kS2Pi * (1.f + 3.f * kC * v * v);
    d[i] += g[i] * dd;
  }
}

}  // namespace old

// ---- The comparisons. ----

// The exp the rewritten kernels share, against double-precision exp, on a
// sweep of its whole range: within 2 ulp (2^-22 relative); 0 below the range.
TEST(CpuSpeedEquivalence, ExpApproxWithinTwoUlp) {
  double worst = 0, worst_x = 0;
  for (double x = -87.3; x <= 88.3; x += 1.37e-4) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(xf));
    const double rel = std::fabs(ops::cpu::exp_approx(xf) - want) / want;
    if (rel > worst) worst = rel, worst_x = xf;
  }
  std::printf("  exp_approx worst relative error %.2e at x = %.6f\n", worst, worst_x);
  EXPECT_LE(worst, std::ldexp(1.0, -22)) << "at x = " << worst_x;
  EXPECT_EQ(ops::cpu::exp_approx(-88.f), 0.f);
  EXPECT_EQ(ops::cpu::exp_approx(-1e30f), 0.f);
  EXPECT_EQ(ops::cpu::exp_approx(0.f), 1.f);
}

TEST(CpuSpeedEquivalence, Gelu) {
  Ctx& ctx = host_ctx();
  Rng rng(101);
  for (int64_t n : {1, 3, 37, 129, 4099}) {
    // std 3 reaches the tails (|x| > 5) where tanh saturates.
    const Tensor x = randn({n}, rng, 3.f), dy = randn({n}, rng);
    Tensor y = zeros({n}), y_old = zeros({n});
    ops::gelu_forward(ctx, y, x);
    old::gelu_forward(y_old, x);
    expect_close("gelu y n=" + std::to_string(n), y, y_old);
    for (const bool from_zero : {true, false}) {
      Tensor dx = from_zero ? zeros({n}) : randn({n}, rng), dx_old = copy_of(dx);
      ops::gelu_backward(ctx, dx, dy, x);
      old::gelu_backward(dx_old, dy, x);
      expect_close(std::string(from_zero ? "gelu dx" : "gelu dx (accumulated)") + " n=" + std::to_string(n), dx,
                   dx_old);
    }
  }
}

}  // namespace
}  // namespace sy
