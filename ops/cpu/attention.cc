#include "ops/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

// Per (batch, head) and block of query rows, through BLAS: S = Q K^T / sqrt(D)
// as one GEMM into att, the causal softmax row by row (zero above the
// diagonal), then out = A V. Backward: dA = dout V^T and dV += A^T dout, the
// softmax backward row by row into dS (zero above the diagonal), then
// dQ += dS K and dK += dS^T Q (dS carries the 1/sqrt(D)). Q, K, V and their
// gradients are strided views of qkv (leading dimension 3C); out and dout have
// leading dimension C.

namespace {

// Query rows per block: rows [r0, r1) see keys [0, r1) only, so blocks skip
// most of the masked upper triangle (at T = 128, 10/16 of the full GEMMs'
// work). 32 was the fastest of 16, 32, 64 and 128 at tiny's shapes. A multiple
// of 8: the padded rows below never pass the block's last computed column.
constexpr int64_t kRowBlock = 32;

// Row t covers u <= t; its loops run to nv = t + 1 rounded up to 8 (at most
// T) so they stay in whole vectors: the scores in (t, nv) are set to -inf
// first (exp gives exactly 0, adding nothing to the sums), and everything
// past t is zeroed at the end.
inline int64_t padded(int64_t n, int64_t T) { return std::min(T, (n + 7) / 8 * 8); }

// Scores (T, T) to probabilities in place, rows [t0, t1): row t softmaxed over
// u <= t, zero for u > t.
SY_VECTOR_CLONES void causal_softmax(float* a, int64_t T, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    float* row = a + t * T;
    const int64_t n = t + 1, nv = padded(n, T);
    for (int64_t u = n; u < nv; ++u) row[u] = -INFINITY;
    const float mx = max_lanes(row, nv);
    for (int64_t u = 0; u < nv; ++u) row[u] = exp_approx(row[u] - mx);
    const float inv = 1.f / sum_lanes(row, nv);
    for (int64_t u = 0; u < nv; ++u) row[u] *= inv;
    std::fill(row + n, row + T, 0.f);
  }
}

// dA (T, T) to dS in place, rows [t0, t1): ds[t,u] = a[t,u] (da[t,u] - sum_u' a[t,u'] da[t,u']) * scale
// for u <= t, zero for u > t (a is zero there; da is finite up to the block's last column).
SY_VECTOR_CLONES void causal_softmax_backward(float* d, const float* a, int64_t T, int64_t t0, int64_t t1,
                                               float scale) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* ar = a + t * T;
    float* dr = d + t * T;
    const int64_t n = t + 1, nv = padded(n, T);
    const float dot = dot_lanes(ar, dr, nv);
    for (int64_t u = 0; u < nv; ++u) dr[u] = ar[u] * (dr[u] - dot) * scale;
    std::fill(dr + n, dr + T, 0.f);
  }
}

}  // namespace

void attention_forward(Ctx&, const AttentionArgs& args) {
  const AttentionShape& s = args.shape;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = args.qkv.f32();
  float* o = args.out.f32();
  float* a = args.att.f32();
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      const float* q = in + b * T * C3 + h * D;  // (T, D), ld 3C
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* att = a + (b * s.H + h) * T * T;  // (T, T)
      float* out = o + b * T * C + h * D;
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
        const int64_t r1 = std::min(T, r0 + kRowBlock), m = r1 - r0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, D, scale, q + r0 * C3, C3, k, C3, 0.f,
                    att + r0 * T, T);
        causal_softmax(att, T, r0, r1);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1, 1.f, att + r0 * T, T, v, C3, 0.f,
                    out + r0 * C, C);
      }
    }
}

void attention_backward(Ctx&, const AttentionBackwardArgs& args) {
  const AttentionShape& s = args.shape;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = args.qkv.f32();
  float* din = args.dqkv.f32();
  std::vector<float> ds(T * T);  // dA, then dS, of one (batch, head)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      const float* q = in + b * T * C3 + h * D;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = din + b * T * C3 + h * D;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const float* att = args.att.f32() + (b * s.H + h) * T * T;
      const float* dout = args.dout.f32() + b * T * C + h * D;
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
        const int64_t r1 = std::min(T, r0 + kRowBlock), m = r1 - r0;
        const float* a = att + r0 * T;
        float* d = ds.data() + r0 * T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, D, 1.f, dout + r0 * C, C, v, C3, 0.f, d, T);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, D, m, 1.f, a, T, dout + r0 * C, C, 1.f, dv, C3);
        causal_softmax_backward(ds.data(), att, T, r0, r1, scale);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1, 1.f, d, T, k, C3, 1.f, dq + r0 * C3, C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, D, m, 1.f, d, T, q + r0 * C3, C3, 1.f, dk, C3);
      }
    }
}

}  // namespace sy::ops::cpu
