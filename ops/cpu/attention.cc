#include "ops/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/vec_math.h"

namespace sy::ops::cpu {

// Per (batch, head) and block of query rows, through BLAS. Forward:
// S = Q K^T / sqrt(D) as one GEMM into a block buffer, the causal softmax row
// by row (lse_t = max + log sum saved, P zero above the diagonal), then
// out = P V. Backward, per block: S again by the same GEMM, P = exp(S - lse)
// (the forward's probabilities to a few ulp, ops/attention.h), dP = dout V^T,
// dV += P^T dout, the softmax backward row by row into dS, then dQ += dS K
// and dK += dS^T Q (dS carries the 1/sqrt(D)). Q, K, V and their gradients
// are strided views of qkv (leading dimension 3C); out and dout have leading
// dimension C. Nothing of size T^2 outlives a block.

namespace {

// Query rows per block: rows [r0, r1) see keys [0, r1) only, so blocks skip
// most of the masked upper triangle (at T = 128, 10/16 of the full GEMMs'
// work). 32 was the fastest of 16, 32, 64 and 128 at tiny's shapes. A multiple
// of 8: the padded rows below never pass the block's last computed column.
constexpr int64_t kRowBlock = 32;

// Row t covers u <= t; its loops run to nv = t + 1 rounded up to 8 (at most
// the block's width) so they stay in whole vectors: the scores in (t, nv) are
// set to -inf first (exp gives exactly 0, adding nothing to the sums), and
// everything past t is zeroed at the end.
inline int64_t padded(int64_t n, int64_t w) { return std::min(w, (n + 7) / 8 * 8); }

// Scores to probabilities in place for the block's rows t in [r0, r0 + m):
// row i = t - r0 of p (leading dimension w = r0 + m), softmaxed over u <= t,
// zero for u > t; lse[i] = log sum_{u<=t} e^{s[t,u]}.
SY_VECTOR_CLONES void causal_softmax(float* p, float* lse, int64_t r0, int64_t m) {
  const int64_t w = r0 + m;
  for (int64_t i = 0; i < m; ++i) {
    float* row = p + i * w;
    const int64_t n = r0 + i + 1, nv = padded(n, w);
    for (int64_t u = n; u < nv; ++u) row[u] = -INFINITY;
    const float mx = max_lanes(row, nv);
    for (int64_t u = 0; u < nv; ++u) row[u] = exp_approx(row[u] - mx);
    const float sum = sum_lanes(row, nv);
    const float inv = 1.f / sum;
    for (int64_t u = 0; u < nv; ++u) row[u] *= inv;
    std::fill(row + n, row + w, 0.f);
    lse[i] = mx + std::log(sum);
  }
}

// Scores to the forward's probabilities, p = e^{s - lse_t} for u <= t and 0
// above the diagonal (same layout as causal_softmax).
SY_VECTOR_CLONES void causal_probs(float* p, const float* lse, int64_t r0, int64_t m) {
  const int64_t w = r0 + m;
  for (int64_t i = 0; i < m; ++i) {
    float* row = p + i * w;
    const int64_t n = r0 + i + 1, nv = padded(n, w);
    for (int64_t u = n; u < nv; ++u) row[u] = -INFINITY;
    const float l = lse[i];
    for (int64_t u = 0; u < nv; ++u) row[u] = exp_approx(row[u] - l);
    std::fill(row + n, row + w, 0.f);
  }
}

// dP to dS in place (same layout): ds[t,u] = p[t,u] (dp[t,u] - sum_u' p[t,u'] dp[t,u']) * scale
// for u <= t, zero for u > t (p is zero there; dp is finite up to the block's last column).
SY_VECTOR_CLONES void causal_softmax_backward(float* d, const float* p, int64_t r0, int64_t m, float scale) {
  const int64_t w = r0 + m;
  for (int64_t i = 0; i < m; ++i) {
    const float* pr = p + i * w;
    float* dr = d + i * w;
    const int64_t n = r0 + i + 1, nv = padded(n, w);
    const float dot = dot_lanes(pr, dr, nv);
    for (int64_t u = 0; u < nv; ++u) dr[u] = pr[u] * (dr[u] - dot) * scale;
    std::fill(dr + n, dr + w, 0.f);
  }
}

}  // namespace

void attention_forward(Ctx&, const AttentionArgs& args) {
  const AttentionShape& s = args.shape;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = args.qkv.f32();
  float* o = args.out.f32();
  std::vector<float> p(kRowBlock * T);  // one block's scores, then probabilities (m, r1)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      const float* q = in + b * T * C3 + h * D;  // (T, D), ld 3C
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* out = o + b * T * C + h * D;
      float* lse = args.lse.f32() + (b * s.H + h) * T;
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
        const int64_t r1 = std::min(T, r0 + kRowBlock), m = r1 - r0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, D, scale, q + r0 * C3, C3, k, C3, 0.f, p.data(),
                    r1);
        causal_softmax(p.data(), lse + r0, r0, m);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1, 1.f, p.data(), r1, v, C3, 0.f, out + r0 * C,
                    C);
      }
    }
}

void attention_backward(Ctx&, const AttentionBackwardArgs& args) {
  const AttentionShape& s = args.shape;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = args.qkv.f32();
  float* din = args.dqkv.f32();
  std::vector<float> p(kRowBlock * T), ds(kRowBlock * T);  // one block's P and dP, then dS (m, r1)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.H; ++h) {
      const float* q = in + b * T * C3 + h * D;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = din + b * T * C3 + h * D;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const float* lse = args.lse.f32() + (b * s.H + h) * T;
      const float* dout = args.dout.f32() + b * T * C + h * D;
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
        const int64_t r1 = std::min(T, r0 + kRowBlock), m = r1 - r0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, D, scale, q + r0 * C3, C3, k, C3, 0.f, p.data(),
                    r1);
        causal_probs(p.data(), lse + r0, r0, m);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r1, D, 1.f, dout + r0 * C, C, v, C3, 0.f, ds.data(),
                    r1);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, D, m, 1.f, p.data(), r1, dout + r0 * C, C, 1.f, dv,
                    C3);
        causal_softmax_backward(ds.data(), p.data(), r0, m, scale);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, r1, 1.f, ds.data(), r1, k, C3, 1.f,
                    dq + r0 * C3, C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1, D, m, 1.f, ds.data(), r1, q + r0 * C3, C3, 1.f, dk,
                    C3);
      }
    }
}

}  // namespace sy::ops::cpu
