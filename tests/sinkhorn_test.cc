// Sinkhorn balancing (ops/sinkhorn.h): one step computed by hand, the
// marginals at the fixed point, the offsets' indifference to a row's shift,
// a hand-solved balanced split of tokens that all prefer one expert, NaN,
// the CUDA kernels' fp32 arithmetic replayed on the host (against the
// reference, and a NaN kept through its merges), and the refusals. The
// router's use of it is in moe_routing_policy_test.cc; the CUDA kernels
// against this reference in tests/backend_ops/cases_routing.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/online_softmax.h"
#include "ops/sinkhorn.h"

namespace sy::ops {
namespace {

std::vector<float> balance(const std::vector<float>& keys, int64_t N, int64_t G, int iters) {
  const Tensor k = Tensor::from_host(keys, {N, G});
  Tensor h = Tensor::empty({G}, DType::f32, host_ctx());
  sinkhorn_balance(host_ctx(), h, k, iters);
  return h.to_vector<float>();
}

// Keys on a grid of eighths (exact in float, and after adding an integer).
std::vector<float> grid_keys(int64_t n, Rng& rng) {
  std::vector<float> k(n);
  for (auto& v : k) v = static_cast<float>(rng.below(33)) / 8.f - 2.f;
  return k;
}

// K = exp(a) = [[1, 3], [1, 1]], h = 0: row sums 4 and 2, so (1)
// u = 1 / (N r) = (1/8, 1/4); column sums of u K are 3/8 and 5/8, so (2)
// v = 1 / (G c) = (4/3, 4/5), h = log v.
TEST(Sinkhorn, OneStepByHand) {
  const std::vector<float> h = balance({0.f, std::log(3.f), 0.f, 0.f}, 2, 2, 1);
  EXPECT_NEAR(h[0], std::log(4.0 / 3.0), 1e-6);
  EXPECT_NEAR(h[1], std::log(0.8), 1e-6);
}

// At the fixed point P = exp(a + f + h), with f from (1), has rows of 1/N
// and columns of 1/G.
TEST(Sinkhorn, FixedPointHasTheMarginals) {
  const int64_t N = 50, G = 7;
  Rng rng(3);
  std::vector<float> a(N * G);
  for (auto& v : a) v = static_cast<float>(rng.normal() * 2.0);
  const std::vector<float> h = balance(a, N, G, 300);
  std::vector<double> col(G, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    double z = 0;
    for (int64_t g = 0; g < G; ++g) z += std::exp(double{a[i * G + g]} + h[g]);
    const double f = -std::log(double(N)) - std::log(z);
    double row = 0;
    for (int64_t g = 0; g < G; ++g) {
      const double p = std::exp(double{a[i * G + g]} + h[g] + f);
      row += p;
      col[g] += p;
    }
    EXPECT_NEAR(row * N, 1.0, 1e-9) << "row " << i;  // (f was made for it)
  }
  for (int64_t g = 0; g < G; ++g) EXPECT_NEAR(col[g] * G, 1.0, 1e-5) << "expert " << g;
}

// Adding a constant to a row changes that row's f only, never h.
TEST(Sinkhorn, ARowShiftLeavesTheOffsets) {
  const int64_t N = 40, G = 5;
  Rng rng(4);
  const std::vector<float> a = grid_keys(N * G, rng);
  std::vector<float> shifted = a;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t g = 0; g < G; ++g) shifted[i * G + g] += static_cast<float>(i % 7) - 3.f;
  const std::vector<float> h = balance(a, N, G, 20), hs = balance(shifted, N, G, 20);
  for (int64_t g = 0; g < G; ++g) EXPECT_NEAR(h[g], hs[g], 1e-6) << "expert " << g;
}

// Four tokens prefer expert 0 by x = 2, 1.9, 1.8, 1.7 over expert 1. A row
// of P is (sigma(x_i + d), sigma(-x_i - d)) / N with d = h_0 - h_1, so
// column 0 holds 1/2 where sum_i sigma(x_i + d) = 2: by the symmetry
// sigma(t) + sigma(-t) = 1, d = -1.85. The top-1 of a + h then sends the
// two most decided tokens to expert 0 and the others to expert 1, where
// the top-1 of a sends all four to expert 0.
TEST(Sinkhorn, TokensThatAllPreferOneExpertSplitEvenly) {
  const std::vector<float> a = {2.f, 0.f, 1.9f, 0.f, 1.8f, 0.f, 1.7f, 0.f};
  const std::vector<float> h = balance(a, 4, 2, 100);
  EXPECT_NEAR(h[0] - h[1], -1.85, 1e-5);
  const int expected[] = {0, 0, 1, 1};
  for (int i = 0; i < 4; ++i) {
    const int choice = a[2 * i] + h[0] > a[2 * i + 1] + h[1] ? 0 : 1;
    EXPECT_EQ(choice, expected[i]) << "token " << i;
  }
}

// One NaN key reaches every column's log-sum-exp through its row's f.
TEST(Sinkhorn, ANanKeyMakesEveryOffsetNan) {
  std::vector<float> a(12, 0.5f);
  a[7] = std::numeric_limits<float>::quiet_NaN();
  for (float v : balance(a, 4, 3, 2)) EXPECT_TRUE(std::isnan(v));
}

// A +inf key likewise (the GPU's online softmax meets exp(inf - inf)); at
// one iteration too, where a +inf log-sum-exp would leave the other
// columns finite on one backend alone.
TEST(Sinkhorn, AnInfiniteKeyMakesEveryOffsetNan) {
  for (const int iters : {1, 2}) {
    std::vector<float> a(12, 0.5f);
    a[4] = std::numeric_limits<float>::infinity();
    for (float v : balance(a, 4, 3, iters)) EXPECT_TRUE(std::isnan(v)) << iters << " iterations";
  }
}

// The CUDA kernels' arithmetic (ops/cuda/sinkhorn.cu) replayed on the
// host in fp32: a row's experts dealt to 32 lanes (expert g to lane g mod
// 32), each lane's running sum, then the xor butterfly; a column's rows in
// chunks of 256 (the kernel's kChunkRows), merged in chunk order.
std::vector<float> cuda_replay(const std::vector<float>& a, int64_t N, int64_t G, int iters) {
  constexpr int64_t kChunkRows = 256;
  std::vector<float> h(G, 0.f), f(N);
  const float log_n = std::log(static_cast<float>(N)), log_g = std::log(static_cast<float>(G));
  for (int t = 0; t < iters; ++t) {
    for (int64_t i = 0; i < N; ++i) {
      OnlineSoftmax lane[32], next[32];
      for (int64_t g = 0; g < G; ++g) lane[g % 32].add(a[i * G + g] + h[g]);
      for (int d = 16; d > 0; d /= 2) {
        for (int l = 0; l < 32; ++l) next[l] = OnlineSoftmax::merge(lane[l], lane[l ^ d]);
        std::copy(next, next + 32, lane);
      }
      f[i] = -log_n - lane[0].log_sum_exp();
    }
    for (int64_t g = 0; g < G; ++g) {
      OnlineSoftmax column;
      for (int64_t c = 0; c < N; c += kChunkRows) {
        OnlineSoftmax part;
        for (int64_t i = c; i < std::min(N, c + kChunkRows); ++i) part.add(a[i * G + g] + f[i]);
        column = OnlineSoftmax::merge(column, part);
      }
      h[g] = -log_g - column.log_sum_exp();
    }
  }
  return h;
}

// Normal keys plus a per-expert offset from -2 to 2, so h is of order 1
// (on keys with no column preference h is a small difference of terms
// near log N + log G, which fp32 resolves to ~1e-6 absolute only).
std::vector<float> offset_keys(int64_t N, int64_t G, Rng& rng) {
  std::vector<float> a(N * G);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t g = 0; g < G; ++g)
      a[i * G + g] = static_cast<float>(rng.normal()) + 4.f * static_cast<float>(g) / static_cast<float>(G) - 2.f;
  return a;
}

// Fewer experts than lanes (lanes with nothing to merge), 40 and 100
// (lanes of two to four values), 700 rows (three chunks, the last partial).
TEST(Sinkhorn, CudaArithmeticMatchesTheReference) {
  for (const int64_t G : {8, 40, 100}) {
    Rng rng(static_cast<uint64_t>(G));
    const int64_t N = 700;
    const std::vector<float> a = offset_keys(N, G, rng);
    const std::vector<float> want = balance(a, N, G, 5), got = cuda_replay(a, N, G, 5);
    for (int64_t g = 0; g < G; ++g) EXPECT_NEAR(got[g], want[g], 1e-5) << "G " << G << ", expert " << g;
  }
}

// A lane whose only value is NaN holds (m = -inf, s = NaN): the merge with
// an empty lane must keep the NaN (at G <= 16 every lane's first partner is
// empty), and so must a chunk's; a +inf key ends NaN there too.
TEST(Sinkhorn, CudaArithmeticKeepsANan) {
  for (const int64_t G : {3, 8, 40}) {
    std::vector<float> a(300 * G, 0.5f);
    a[7] = std::numeric_limits<float>::quiet_NaN();
    for (float v : cuda_replay(a, 300, G, 2)) EXPECT_TRUE(std::isnan(v)) << "G " << G;
    a[7] = std::numeric_limits<float>::infinity();  // and a +inf, at one iteration
    for (float v : cuda_replay(a, 300, G, 1)) EXPECT_TRUE(std::isnan(v)) << "G " << G << ", +inf";
  }
}

TEST(Sinkhorn, RefusesWhatItCannotBalance) {
  Tensor h = Tensor::empty({3}, DType::f32, host_ctx());
  const Tensor keys = Tensor::zeros({4, 3}, DType::f32, host_ctx());
  EXPECT_THROW(sinkhorn_balance(host_ctx(), h, keys, 0), Error);
  const Tensor none = Tensor::zeros({0, 3}, DType::f32, host_ctx());
  EXPECT_THROW(sinkhorn_balance(host_ctx(), h, none, 3), Error);
  Tensor wrong = Tensor::empty({4}, DType::f32, host_ctx());
  EXPECT_THROW(sinkhorn_balance(host_ctx(), wrong, keys, 3), Error);
}

}  // namespace
}  // namespace sy::ops
