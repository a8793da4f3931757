// The cross-entropy kernel's one-pass softmax (ops/cuda/online_softmax.h)
// without a GPU: a row's values dealt to a block's threads as
// ops/cuda/cross_entropy.cu deals them (element by element: v to thread
// v mod T; in 16-byte vectors: split_row's head and tail element e to thread
// e, body vector i to thread i mod T), each thread's running (m, s), then
// the row's max M and Z = sum_t s_t e^(m_t - M) in thread order. Z must be the
// row's normaliser sum_v e^(x_v - M) computed in double, on rows of normal
// values, rows with -inf (masked vocabulary: whole threads with none above
// it), values growing along the row (m rescaled at every step), and rows with
// NaN or +inf (NaN out, as the CPU gives).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/rng.h"
#include "ops/cuda/online_softmax.h"

namespace sy::ops {
namespace {

struct RowStats {
  float M;
  double Z;
};

// Row n of an (N, V) array with the values x (n: where the row starts
// against a 16-byte boundary, for the vectors' split).
RowStats replay(const std::vector<float>& x, int threads, bool vec4, int64_t n = 0) {
  std::vector<OnlineSoftmax> t(threads);
  const int64_t V = static_cast<int64_t>(x.size());
  if (vec4) {  // each thread: its head and tail elements, then its vectors (the kernel's order)
    const RowSplit r = split_row(n, V);
    for (int64_t e = 0; e < threads; ++e) {
      if (e < r.head) t[e].add(x[e]);
      if (e < r.tail) t[e].add(x[r.head + 4 * r.body + e]);
    }
    for (int64_t i = 0; i < r.body; ++i)
      for (int e = 0; e < 4; ++e) t[i % threads].add(x[r.head + 4 * i + e]);
  } else {
    for (int64_t v = 0; v < V; ++v) t[v % threads].add(x[v]);
  }
  float M = -INFINITY;
  for (const OnlineSoftmax& o : t) M = std::max(M, o.m);
  double Z = 0;
  for (const OnlineSoftmax& o : t) Z += o.share(M);
  return {M, Z};
}

RowStats reference(const std::vector<float>& x) {
  float M = -INFINITY;
  for (float v : x) M = std::max(M, v);
  double Z = 0;
  for (float v : x) Z += std::exp(static_cast<double>(v) - M);
  return {M, Z};
}

void expect_row(const std::vector<float>& x, const char* what) {
  const RowStats want = reference(x);
  for (int threads : {32, 64, 256})
    for (int split = 0; split < 5; ++split) {  // element by element, then rows n = 0..3
      const bool vec4 = split > 0;
      const RowStats got = replay(x, threads, vec4, split - 1);
      EXPECT_EQ(got.M, want.M) << what << ", " << threads << " threads, split " << split;
      EXPECT_NEAR(got.Z / want.Z, 1.0, 1e-6) << what << ", " << threads << " threads, split " << split;
    }
}

// The split itself: every element in exactly one of head, body and tail; the
// body starts on a 16-byte boundary of the array; head and tail under 4.
TEST(OnlineSoftmax, RowSplitCoversTheRowOnceFromABoundary) {
  for (int64_t V = 1; V <= 70; ++V)
    for (int64_t n = 0; n < 8; ++n) {
      const RowSplit r = split_row(n, V);
      EXPECT_EQ(r.head + 4 * r.body + r.tail, V) << "V " << V << " row " << n;
      EXPECT_TRUE(r.head >= 0 && r.head < 4 && r.tail >= 0 && r.tail < 4 && r.body >= 0) << "V " << V << " row " << n;
      if (r.body > 0) EXPECT_EQ((n * V + r.head) % 4, 0) << "V " << V << " row " << n;
      if (r.head < V && r.body == 0) EXPECT_LT(V - r.head, 4) << "V " << V << " row " << n;
    }
}

TEST(OnlineSoftmax, NormaliserOfNormalRows) {
  Rng rng(31);
  for (int V : {1, 7, 67, 256, 515, 1024, 4100}) {
    std::vector<float> x(V);
    for (float& v : x) v = 3.f * rng.normal();
    expect_row(x, "normal");
  }
}

TEST(OnlineSoftmax, GrowingValuesRescaleEveryStep) {
  std::vector<float> x(1024);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.05f * static_cast<float>(i);  // each thread's max moves every value
  expect_row(x, "ascending");
  std::reverse(x.begin(), x.end());
  expect_row(x, "descending");
}

TEST(OnlineSoftmax, MinusInfinityAddsNothing) {
  Rng rng(32);
  std::vector<float> x(1024);
  for (size_t i = 0; i < x.size(); ++i) x[i] = i < 600 || i % 3 == 0 ? -INFINITY : rng.normal();
  expect_row(x, "masked");  // the first 600: whole threads see only -inf
  x.assign(1024, -INFINITY);
  x[1000] = 2.f;
  expect_row(x, "one finite value");
  const RowStats all = replay(std::vector<float>(64, -INFINITY), 32, false);
  EXPECT_EQ(all.M, -INFINITY);
  EXPECT_EQ(all.Z, 0.0);  // the kernel's loss: log 0 - NaN, NaN
}

TEST(OnlineSoftmax, NanAndInfinityReachZ) {
  for (float bad : {NAN, INFINITY}) {
    for (size_t where : {size_t{0}, size_t{5}, size_t{700}}) {
      std::vector<float> x(1024, 0.5f);
      x[where] = bad;
      for (bool vec4 : {false, true}) EXPECT_TRUE(std::isnan(replay(x, 256, vec4).Z)) << bad << " at " << where;
    }
  }
  std::vector<float> x(1024, -INFINITY);
  x[3] = NAN;  // a NaN in a thread that saw nothing else
  EXPECT_TRUE(std::isnan(replay(x, 256, false).Z));
}

}  // namespace
}  // namespace sy::ops
