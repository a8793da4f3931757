// Finite-difference gradient checking shared by the op, layer and model
// tests, and the small helpers the op tests share (token ids, bf16 checks).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace sy::testing {

inline void fill_normal(Tensor& t, Rng& rng, float std = 1.f) {
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.normal() * std);
}

// A zero-filled host f32 tensor.
inline Tensor zeros(Shape s) { return Tensor::zeros(std::move(s), DType::f32, host_ctx()); }

inline Tensor randn(Shape s, Rng& rng, float std = 1.f) {
  Tensor t = zeros(std::move(s));
  fill_normal(t, rng, std);
  return t;
}

// sum_i a_i * r_i in double: a scalar loss whose gradient w.r.t. a is r.
inline double dot(const Tensor& a, const Tensor& r) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.f32()[i]) * r.f32()[i];
  return s;
}

// Compares analytic[i] with the central difference (L(x+e) - L(x-e)) / 2e for
// up to max_checks elements of x (spread over the tensor). An element fails
// when |num - ana| > tol * max(|num|, |ana|) + atol; atol = tol * 1e-2 * max|ana|
// keeps tiny gradients from failing on float round-off alone.
inline void expect_gradient(const std::string& what, Tensor& x, const Tensor& analytic,
                            const std::function<double()>& loss, double eps = 1e-2,
                            double tol = 2e-2, int max_checks = 48) {
  ASSERT_EQ(x.shape(), analytic.shape()) << what;
  float* p = x.f32();
  const float* a = analytic.f32();
  const int64_t n = x.numel();
  double amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(static_cast<double>(a[i])));
  const double atol = tol * 1e-2 * amax + 1e-6;
  const int64_t stride = std::max<int64_t>(1, n / max_checks);
  int bad = 0;
  double worst = 0;
  int64_t worst_i = -1;
  double worst_num = 0;
  for (int64_t i = 0; i < n; i += stride) {
    const float orig = p[i];
    p[i] = orig + static_cast<float>(eps);
    const double lp = loss();
    p[i] = orig - static_cast<float>(eps);
    const double lm = loss();
    p[i] = orig;
    const double num = (lp - lm) / (2 * eps);
    const double err = std::fabs(num - a[i]);
    const double allowed = tol * std::max(std::fabs(num), std::fabs(static_cast<double>(a[i]))) + atol;
    if (err > allowed) ++bad;
    if (err - allowed > worst || worst_i < 0) {
      worst = err - allowed;
      worst_i = i;
      worst_num = num;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " elements outside tolerance; worst at " << worst_i
                    << ": analytic " << a[worst_i] << " vs numeric " << worst_num;
  // A gradient check of an all-zero gradient proves nothing.
  EXPECT_GT(amax, 0.0) << what << ": analytic gradient is identically zero";
}

// Token ids as a host tensor.
inline Tensor tokens(const std::vector<int32_t>& t) { return Tensor::from_host(t); }

// bf16 mode's checks (Config.precision BF16): a host copy of t with every
// element rounded to bf16 (round to nearest even); the same bytes; and the
// relative L2 distance ||a - b|| / ||b|| (||b|| at least 1e-15, so an all-zero
// b gives ||a|| x 1e15 rather than a division by zero). backend_ops/harness.h
// uses them too.
inline Tensor rounded(const Tensor& t) { return t.to(DType::bf16).to(DType::f32); }
inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}
inline double rel_diff(const Tensor& a, const Tensor& b) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = static_cast<double>(a.f32()[i]) - b.f32()[i];
    num += d * d;
    den += static_cast<double>(b.f32()[i]) * b.f32()[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace sy::testing
