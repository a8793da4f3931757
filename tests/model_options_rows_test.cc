// The CUDA path of the model options' ops without a GPU: the per-lane,
// per-index and per-element functions of ops/cuda/rmsnorm_rows.h,
// rope_rows.h and swiglu_rows.h (what each CUDA thread runs) run here on the
// host, in the CUDA launchers' arrangement (RMSNorm: 32 lanes per row with
// warp_sum's butterfly emulated, dw by common.cuh's column sum in its chunk
// order), and are compared with the CPU reference within 1e-5 relative L2
// (class F). Only the launch mechanics and the device's float rounding (expf,
// fp64 pow/cos/sin within an ulp or two, FMA contraction) are left to the GPU
// tests (backend_ops_test's CUDA instance).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "grad_check.h"
#include "ops/cuda/rmsnorm_rows.h"
#include "ops/cuda/rope_rows.h"
#include "ops/cuda/swiglu_rows.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

namespace sy {
namespace {

using testing::randn;
namespace rms = ops::rmsnorm_rows;

double rel_l2(const Tensor& got, const Tensor& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double d = static_cast<double>(got.f32()[i]) - want.f32()[i];
    num += d * d;
    den += static_cast<double>(want.f32()[i]) * want.f32()[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

constexpr double kClassF = 1e-5;

// warp_sum (common.cuh): for o = 16, 8, 4, 2, 1 every lane adds lane ^ o's
// value; every lane ends with the same sum. Lane 0's.
double warp_sum(std::vector<double> v) {
  for (int o = 16; o > 0; o >>= 1) {
    std::vector<double> next(v);
    for (int l = 0; l < 32; ++l) next[l] = v[l] + v[l ^ o];
    v = next;
  }
  return v[0];
}

// common.cuh's column_sums: out[c] += sum_r term(r, c); one chunk (rows <=
// 64) adds onto out in row order; more, chunks of 64 from zero, then part p of
// 8 sums chunks p, p + 8, ... in order, and the 8 parts in order onto out.
template <class F>
void column_sums(float* out, int64_t rows, int64_t cols, F term) {
  constexpr int64_t kChunk = 64;
  constexpr int kParts = 8;  // common.cuh's kFinishParts
  for (int64_t c = 0; c < cols; ++c) {
    if (rows <= kChunk) {
      float acc = out[c];
      for (int64_t r = 0; r < rows; ++r) acc += term(r, c);
      out[c] = acc;
      continue;
    }
    const int64_t chunks = (rows + kChunk - 1) / kChunk;
    float part[kParts] = {};
    for (int64_t j = 0; j < chunks; ++j) {
      float acc = 0.f;
      for (int64_t r = j * kChunk; r < std::min(rows, (j + 1) * kChunk); ++r) acc += term(r, c);
      part[j % kParts] += acc;
    }
    float s = 0.f;
    for (int p = 0; p < kParts; ++p) s += part[p];
    out[c] += s;
  }
}

// ---- RMSNorm ----

struct RmsShape {
  int64_t N, C;
  float std;
};

class RmsNormRows : public ::testing::TestWithParam<RmsShape> {};

TEST_P(RmsNormRows, AgreeWithTheCpuReference) {
  const RmsShape shape = GetParam();
  const int64_t N = shape.N, C = shape.C;  // not a structured binding: the lambda below captures them (C++17)
  const float sd = shape.std;
  Rng rng(0x3a5 + N * 131 + C);
  const Tensor x = randn({N, C}, rng, sd), w = randn({C}, rng), dy = randn({N, C}, rng);
  const Tensor dx0 = randn({N, C}, rng), dw0 = randn({C}, rng);  // gradients accumulate onto these

  Tensor y_ref = testing::zeros({N, C}), rstd_ref = testing::zeros({N});
  Tensor dx_ref = dx0.clone(), dw_ref = dw0.clone();
  ops::rmsnorm_forward(host_ctx(), {y_ref, rstd_ref, x, w});
  ops::rmsnorm_backward(host_ctx(), {dx_ref, dw_ref, dy, x, w, rstd_ref});

  // The kernels' arrangement: one warp per row.
  Tensor y = testing::zeros({N, C}), rstd = testing::zeros({N}), dx = dx0.clone(), dw = dw0.clone();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x.f32() + n * C;
    std::vector<double> part(32);
    for (int l = 0; l < 32; ++l) part[l] = rms::sq_partial(xr, C, l);
    const float s = rms::rstd_of(warp_sum(part), C);
    rstd.f32()[n] = s;
    for (int64_t c = 0; c < C; ++c) y.f32()[n * C + c] = rms::y_of(xr[c], s, w.f32()[c]);
  }
  for (int64_t n = 0; n < N; ++n) {
    const float *xr = x.f32() + n * C, *dyr = dy.f32() + n * C;
    const float s = rstd.f32()[n];
    std::vector<double> part(32);
    for (int l = 0; l < 32; ++l) part[l] = rms::gx_partial(dyr, w.f32(), xr, s, C, l);
    const float gxmean = rms::gxmean_of(warp_sum(part), C);
    for (int64_t c = 0; c < C; ++c) dx.f32()[n * C + c] += rms::dx_of(dyr[c], w.f32()[c], xr[c], s, gxmean);
  }
  column_sums(dw.f32(), N, C, [&](int64_t r, int64_t c) {
    return rms::dw_term(dy.f32()[r * C + c], x.f32()[r * C + c], rstd.f32()[r]);
  });

  EXPECT_LE(rel_l2(y, y_ref), kClassF);
  EXPECT_LE(rel_l2(rstd, rstd_ref), kClassF);
  EXPECT_LE(rel_l2(dx, dx_ref), kClassF);
  EXPECT_LE(rel_l2(dw, dw_ref), kClassF);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsNormRows,
                         ::testing::Values(RmsShape{1, 1, 1.f}, RmsShape{3, 7, 2.f}, RmsShape{33, 48, 3.f},
                                           RmsShape{150, 37, 0.2f}, RmsShape{5, 1000, 1.f}, RmsShape{70, 64, 1e-3f}));

// ---- RoPE ----

struct RopeShape {
  int64_t N, W, heads, D, seq_len;  // seq_len 0: explicit positions
  double base;
};

class RopeRows : public ::testing::TestWithParam<RopeShape> {};

TEST_P(RopeRows, AgreeWithTheCpuReference) {
  const RopeShape s = GetParam();
  Rng rng(0x40e + s.N * 7 + s.D);
  const Tensor x = randn({s.N, s.W}, rng), dy = randn({s.N, s.W}, rng);
  Tensor pos;
  if (s.seq_len == 0) {
    pos = Tensor::empty({s.N}, DType::i32, host_ctx());
    for (int64_t n = 0; n < s.N; ++n) pos.data<int32_t>()[n] = static_cast<int32_t>(rng.below(40000));
  }
  for (const float sign : {1.f, -1.f}) {
    SCOPED_TRACE(sign > 0 ? "forward" : "backward");
    const Tensor& in = sign > 0 ? x : dy;
    Tensor ref = in.clone(), got = in.clone();
    const ops::RopeArgs a{ref, pos, s.seq_len, s.heads, s.D, s.base};
    if (sign > 0)
      ops::rope_forward(host_ctx(), a);
    else
      ops::rope_backward(host_ctx(), a);
    const ops::rope_rows::Rotate f{got.f32(), pos.defined() ? pos.data<int32_t>() : nullptr, s.W, s.seq_len,
                                   s.heads, s.D, s.base, sign};
    for (int64_t i = 0; i < f.count(s.N); ++i) f(i);
    EXPECT_LE(rel_l2(got, ref), kClassF);
    // Columns past the heads are untouched.
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t c = s.heads * s.D; c < s.W; ++c) ASSERT_EQ(got.f32()[n * s.W + c], in.f32()[n * s.W + c]);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeRows,
                         ::testing::Values(RopeShape{21, 72, 8, 6, 0, 10000.0}, RopeShape{20, 30, 3, 8, 7, 500.0},
                                           RopeShape{1, 2, 1, 2, 1, 10000.0}, RopeShape{64, 192, 8, 16, 16, 10000.0},
                                           RopeShape{9, 40, 2, 20, 0, 1e6}));

// ---- SwiGLU ----

TEST(SwigluRows, AgreeWithTheCpuReference) {
  for (const auto& [N, H] : {std::pair<int64_t, int64_t>{29, 37}, {1, 1}, {64, 176}, {7, 3}}) {
    SCOPED_TRACE("N " + std::to_string(N) + " H " + std::to_string(H));
    Rng rng(0x5a1 + N * H);
    const Tensor x = randn({N, 2 * H}, rng, 3.f), dy = randn({N, H}, rng), dx0 = randn({N, 2 * H}, rng);
    Tensor y_ref = testing::zeros({N, H}), dx_ref = dx0.clone();
    ops::swiglu_forward(host_ctx(), {y_ref, x});
    ops::swiglu_backward(host_ctx(), {dx_ref, dy, x});
    Tensor y = testing::zeros({N, H}), dx = dx0.clone();
    const ops::swiglu_rows::Forward fwd{y.f32(), x.f32(), H};
    const ops::swiglu_rows::Backward bwd{dx.f32(), dy.f32(), x.f32(), H};
    for (int64_t i = 0; i < N * H; ++i) fwd(i);
    for (int64_t i = 0; i < N * H; ++i) bwd(i);
    EXPECT_LE(rel_l2(y, y_ref), kClassF);
    EXPECT_LE(rel_l2(dx, dx_ref), kClassF);
  }
}

}  // namespace
}  // namespace sy
