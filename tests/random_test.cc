// The counter-based generator (core/philox.h) and the random ops on it
// (ops/random.h): known answers, distributions, stream independence, and the
// property the design relies on: a draw depends on (seed, stream, step,
// element) only, not on how a tensor is split.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/philox.h"
#include "core/rng.h"
#include "ops/random.h"

namespace sy {
namespace {

// Random123's kat_vectors, "philox4x32 10" lines: counter, key -> output.
TEST(Philox, KnownAnswerVectors) {
  struct Kat {
    Philox4 ctr;
    uint32_t k0, k1;
    Philox4 want;
  };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, 0xffffffff, 0xffffffff,
       {{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, 0xa4093822, 0x299f31d0,
       {{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}},
  };
  for (const Kat& k : kats) {
    const Philox4 got = philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(got.v[i], k.want.v[i]) << "word " << i;
  }
}

TEST(Philox, UniformBitsNeverReachZeroOrOne) {
  EXPECT_GT(bits_to_uniform(0), 0.f);
  EXPECT_LT(bits_to_uniform(0xffffffffu), 1.f);
  EXPECT_EQ(bits_to_uniform(0xffffffffu), 1.f - 1.f / 16777216.f);
  EXPECT_EQ(bits_to_uniform(0x80000000u), 0.5f + 0.5f / 8388608.f);
}

Tensor draw_uniform(int64_t n, const RandomKey& key) {
  Tensor t = Tensor::empty({n}, DType::f32, host_ctx());
  ops::random_uniform(host_ctx(), t, key, 0.f, 1.f);
  return t;
}

// Chi-square of 64 equal bins over 2^20 draws: 63 degrees of freedom, whose
// 1e-6 upper quantile is about 136; a fixed seed makes the check deterministic.
TEST(RandomOps, UniformIsUniform) {
  const int64_t n = 1 << 20, bins = 64;
  const Tensor u = draw_uniform(n, {1234, random_stream(RandomPurpose::jitter, 3), 7, 0});
  std::vector<double> count(bins, 0);
  for (int64_t i = 0; i < n; ++i) {
    const float x = u.f32()[i];
    ASSERT_GT(x, 0.f);
    ASSERT_LT(x, 1.f);
    count[static_cast<int>(x * bins)] += 1;
  }
  const double expect = static_cast<double>(n) / bins;
  double chi2 = 0;
  for (double c : count) chi2 += (c - expect) * (c - expect) / expect;
  EXPECT_LT(chi2, 136.0);
}

TEST(RandomOps, NormalAndGumbelMoments) {
  const int64_t n = 1 << 18;
  const RandomKey key{99, random_stream(RandomPurpose::router_noise, 1), 0, 0};
  Tensor z = Tensor::empty({n}, DType::f32, host_ctx()), g = Tensor::empty({n}, DType::f32, host_ctx());
  ops::random_normal(host_ctx(), z, key, 2.f);
  ops::random_gumbel(host_ctx(), g, key, 0.5f);
  auto moments = [&](const Tensor& t, double& mean, double& var) {
    mean = std::accumulate(t.f32(), t.f32() + n, 0.0) / n;
    var = 0;
    for (int64_t i = 0; i < n; ++i) var += (t.f32()[i] - mean) * (t.f32()[i] - mean);
    var /= n;
  };
  double m, v;
  moments(z, m, v);
  EXPECT_NEAR(m, 0.0, 6 * 2.0 / std::sqrt(n));  // six standard errors
  EXPECT_NEAR(v, 4.0, 0.05);
  moments(g, m, v);
  EXPECT_NEAR(m, 0.5 * 0.5772156649, 6 * 0.5 * 1.2825 / std::sqrt(n));  // Euler-Mascheroni; sd pi/sqrt(6)
  EXPECT_NEAR(v, 0.25 * M_PI * M_PI / 6, 0.02);
}

// Streams, steps and seeds give uncorrelated draws: |r| below 5 / sqrt(n).
TEST(RandomOps, StreamsStepsAndSeedsAreIndependent) {
  const int64_t n = 1 << 16;
  const RandomKey base{5, random_stream(RandomPurpose::jitter, 0), 3, 0};
  RandomKey other_stream = base, other_step = base, other_seed = base;
  other_stream.stream = random_stream(RandomPurpose::jitter, 1);
  other_step.step = 4;
  other_seed.seed = 6;
  const Tensor a = draw_uniform(n, base);
  for (const RandomKey& k : {other_stream, other_step, other_seed}) {
    const Tensor b = draw_uniform(n, k);
    double sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double x = a.f32()[i], y = b.f32()[i];
      sa += x, sb += y, sab += x * y, saa += x * x, sbb += y * y;
    }
    const double cov = sab / n - sa / n * sb / n;
    const double r = cov / std::sqrt((saa / n - sa * sa / n / n) * (sbb / n - sb * sb / n / n));
    EXPECT_LT(std::fabs(r), 5.0 / std::sqrt(n)) << "stream " << k.stream << " step " << k.step << " seed " << k.seed;
  }
}

// Elements 5..14 of a 20-element draw equal a 10-element draw at offset 5:
// what lets a rank draw its slice of the global batch's noise alone.
TEST(RandomOps, DrawDependsOnGlobalIndexOnly) {
  const RandomKey whole{42, random_stream(RandomPurpose::gumbel, 2), 11, 0};
  RandomKey part = whole;
  part.offset = 5;
  Tensor a = Tensor::empty({20}, DType::f32, host_ctx()), b = Tensor::empty({10}, DType::f32, host_ctx());
  ops::random_gumbel(host_ctx(), a, whole, 1.f);
  ops::random_gumbel(host_ctx(), b, part, 1.f);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(b.f32()[i], a.f32()[i + 5]);
  Tensor c = Tensor::empty({10}, DType::f32, host_ctx());
  ops::random_gumbel(host_ctx(), c, part, 1.f);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(c.f32()[i], b.f32()[i]) << "a second draw with the same key differs";
}

// Parameter initialisation (core/rng.h): draw_normals keeps bit for bit what
// the serial loop keeps, on one thread and on several (8M elements split over
// the host's cores), for a whole tensor and for a slice of one, and leaves the
// generator where the serial loop leaves it.
TEST(Rng, DrawNormalsMatchesTheSerialStream) {
  struct Case {
    int64_t whole, begin, end;
  };
  for (const Case c : {Case{7, 0, 7}, Case{1000, 300, 701}, Case{1000, 0, 0}, Case{int64_t{1} << 23, 0, int64_t{1} << 23},
                       Case{(int64_t{1} << 23) + 5, 12345, (int64_t{1} << 23) - 3}}) {
    Rng serial(99), fast(99);
    serial.next_u64();  // a generator part way along its stream
    fast.next_u64();
    std::vector<float> want(c.end - c.begin), got(c.end - c.begin, std::nanf(""));
    for (int64_t i = 0; i < c.whole; ++i) {
      const float v = static_cast<float>(serial.normal() * 0.02f);
      if (i >= c.begin && i < c.end) want[i - c.begin] = v;
    }
    draw_normals(fast, 0.02f, c.whole, c.begin, c.end, got.data());
    int64_t differ = 0;
    for (size_t i = 0; i < want.size(); ++i) differ += std::memcmp(&want[i], &got[i], sizeof(float)) != 0;
    EXPECT_EQ(differ, 0) << "whole " << c.whole << ", [" << c.begin << ", " << c.end << ")";
    EXPECT_EQ(fast.state(), serial.state()) << "whole " << c.whole << ": the generator does not end where the loop does";
  }
  Rng r(1);
  float x;
  EXPECT_THROW(draw_normals(r, 1.f, 10, 4, 11, &x), Error);
}

}  // namespace
}  // namespace sy
