// Float math the compiler vectorises, for the CPU ops' inner loops (no libm
// calls, no branches: plain arithmetic, compares that become blends, and an
// integer shift for the exponent), so a loop over an array of them runs 4 or
// 8 lanes wide instead of one expf/tanhf call per element.
//
//   exp_approx(x)  e^x: n = round(x log2 e), r = x - n ln 2 (ln 2 split in two
//                  parts, Cody-Waite), e^r by Cephes' degree-6 polynomial on
//                  |r| <= ln2/2, times 2^n built in the exponent bits. Relative
//                  error <= 2 ulp for x in [-87.3, 88.3]; 0 below -87.3 (as
//                  expf underflows there), x clamped to 88.3 above; NaN in,
//                  NaN out (a select at the end, so the loop still
//                  vectorises), so a NaN score reaches the outputs and the
//                  trainer's finiteness checks as it does through expf.
//   sum_lanes, dot_lanes, max_lanes
//                  reductions in 8 independent partial results (an order the
//                  compiler may vectorise), then combined; max_lanes needs n >= 1.
//
// SY_VECTOR_CLONES on a loop kernel compiles it twice, for AVX2 (8 lanes) and
// for the x86-64 baseline (SSE2, 4 lanes), and picks one at load time by the
// CPU (GCC/Clang function multiversioning). Neither clone uses FMA, and the
// lane reductions fix their order in the code, so both give the same bits.
//
// Internal to ops/cpu/: no other layer includes it.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define SY_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SY_VECTOR_CLONES
#endif

namespace sy::ops::cpu {

inline float exp_approx(float x) {
  constexpr float kHi = 88.3762626647949f, kLo = -87.3365447504f;
  constexpr float kLog2e = 1.44269504088896341f, kC1 = 0.693359375f, kC2 = -2.12194440e-4f;
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const bool under = x < kLo, nan = x != x;
  const float in = x;
  x = x < kHi ? x : kHi;  // the forms of minps/maxps (NaN becomes kHi here)
  x = x > kLo ? x : kLo;
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * kC1) - n * kC2;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * (r * r) + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = p * scale;
  return nan ? in : under ? 0.f : y;
}

inline float sum_lanes(const float* x, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j];
  for (; i < n; ++i) acc[i & 7] += x[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

inline float dot_lanes(const float* x, const float* y, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += x[i + j] * y[i + j];
  for (; i < n; ++i) acc[i & 7] += x[i] * y[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

inline float max_lanes(const float* x, int64_t n) {
  float acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = x[0];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  for (; i < n; ++i) acc[i & 7] = x[i] > acc[i & 7] ? x[i] : acc[i & 7];
  float m = acc[0];
  for (int j = 1; j < 8; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

}  // namespace sy::ops::cpu
