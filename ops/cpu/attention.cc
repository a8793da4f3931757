#include "ops/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/vec_math.h"
#include "ops/elementwise.h"

namespace sy::ops::cpu {

// Per (batch, head) and block of query rows, through BLAS. Forward:
// S = Q K^T / sqrt(D) as one GEMM into a block buffer, the causal softmax row
// by row (lse_t = max + log sum saved, P zero outside each row's keys), then
// out = P V. Backward, per block: S again by the same GEMM, P = exp(S - lse)
// (the forward's probabilities to a few ulp, ops/attention.h), dP = dout V^T,
// dV += P^T dout, the softmax backward row by row into dS, then dQ += dS K
// and dK += dS^T Q (dS carries the 1/sqrt(D)). Q, K, V and their gradients
// are strided views of qkv (leading dimension 3C); out and dout have leading
// dimension C. Nothing of size T^2 outlives a block.

namespace {

// Query rows per block: rows [r0, r1) see keys [c0, r1) only, so blocks skip
// most of the masked upper triangle (at T = 128, 10/16 of the full GEMMs'
// work) and, with a window w, every key before c0 = r0 - w + 1. 32 was the
// fastest of 16, 32, 64 and 128 at tiny's shapes. A multiple of 8: the padded
// rows below never pass the block's last computed column.
constexpr int64_t kRowBlock = 32;

// One block of query rows [r0, r0 + m) over key columns [c0, r0 + m): row i
// (query t = r0 + i) is row i of a buffer of width w = r0 + m - c0, and its
// keys are the columns [lo, hi) of that row (hi = t + 1 - c0; lo = 0 without
// a window, t - window + 1 - c0 with one).
struct Rows {
  int64_t r0, m, c0, window;
  int64_t width() const { return r0 + m - c0; }
  int64_t hi(int64_t i) const { return r0 + i + 1 - c0; }
  int64_t lo(int64_t i) const { return window > 0 ? std::max<int64_t>(0, r0 + i - window + 1 - c0) : 0; }
};

// A row's loops run over [lo8, nv): lo rounded down to 8 and hi rounded up
// to 8 (at most the width), so they stay in whole vectors; the scores in
// [lo8, lo) and [hi, nv) are set to -inf first (exp gives exactly 0, adding
// nothing to the sums), and everything outside [lo, hi) is zeroed at the end.
// Without a window lo8 = lo = 0.
inline int64_t padded(int64_t n, int64_t w) { return std::min(w, (n + 7) / 8 * 8); }
inline int64_t floor8(int64_t n) { return n / 8 * 8; }

// Scores to probabilities in place: row i of p softmaxed over [lo, hi) and
// zero elsewhere; lse[i] = log sum_{u in [lo, hi)} e^{s[t,u]}.
SY_VECTOR_CLONES void causal_softmax(float* p, float* lse, const Rows& r) {
  const int64_t w = r.width();
  for (int64_t i = 0; i < r.m; ++i) {
    float* row = p + i * w;
    const int64_t lo = r.lo(i), hi = r.hi(i), l8 = floor8(lo), nv = padded(hi, w);
    for (int64_t u = l8; u < lo; ++u) row[u] = -INFINITY;
    for (int64_t u = hi; u < nv; ++u) row[u] = -INFINITY;
    const float mx = max_lanes(row + l8, nv - l8);
    for (int64_t u = l8; u < nv; ++u) row[u] = exp_approx(row[u] - mx);
    const float sum = sum_lanes(row + l8, nv - l8);
    const float inv = 1.f / sum;
    for (int64_t u = l8; u < nv; ++u) row[u] *= inv;
    std::fill(row, row + lo, 0.f);
    std::fill(row + hi, row + w, 0.f);
    lse[i] = mx + std::log(sum);
  }
}

// Scores to the forward's probabilities, p = e^{s - lse_t} in [lo, hi) and 0
// elsewhere (same layout as causal_softmax).
SY_VECTOR_CLONES void causal_probs(float* p, const float* lse, const Rows& r) {
  const int64_t w = r.width();
  for (int64_t i = 0; i < r.m; ++i) {
    float* row = p + i * w;
    const int64_t lo = r.lo(i), hi = r.hi(i), l8 = floor8(lo), nv = padded(hi, w);
    for (int64_t u = l8; u < lo; ++u) row[u] = -INFINITY;
    for (int64_t u = hi; u < nv; ++u) row[u] = -INFINITY;
    const float l = lse[i];
    for (int64_t u = l8; u < nv; ++u) row[u] = exp_approx(row[u] - l);
    std::fill(row, row + lo, 0.f);
    std::fill(row + hi, row + w, 0.f);
  }
}

// dP to dS in place (same layout): ds[t,u] = p[t,u] (dp[t,u] - sum_u' p[t,u'] dp[t,u']) * scale
// in [lo, hi), zero elsewhere (p is zero outside; dp is finite over the whole width).
SY_VECTOR_CLONES void causal_softmax_backward(float* d, const float* p, const Rows& r, float scale) {
  const int64_t w = r.width();
  for (int64_t i = 0; i < r.m; ++i) {
    const float* pr = p + i * w;
    float* dr = d + i * w;
    const int64_t lo = r.lo(i), hi = r.hi(i), l8 = floor8(lo), nv = padded(hi, w);
    const float dot = dot_lanes(pr + l8, dr + l8, nv - l8);
    for (int64_t u = l8; u < nv; ++u) dr[u] = pr[u] * (dr[u] - dot) * scale;
    std::fill(dr, dr + lo, 0.f);
    std::fill(dr + hi, dr + w, 0.f);
  }
}

// The block of query rows starting at r0: keys from c0 (the first key its
// first row's window reaches).
Rows block_rows(const AttentionShape& s, int64_t r0) {
  const int64_t m = std::min(s.T, r0 + kRowBlock) - r0;
  const int64_t c0 = s.window > 0 ? std::max<int64_t>(0, r0 - s.window + 1) : 0;
  return {r0, m, c0, s.window};
}

void forward_f32(const AttentionArgs& args) {
  const AttentionShape& s = args.shape;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = args.qkv.f32();
  float* o = args.out.f32();
  std::vector<float> p(kRowBlock * T);  // one block's scores, then probabilities (m, width)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.active_heads(); ++h) {
      const float* q = in + b * T * C3 + h * D;  // (T, D), ld 3C
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* out = o + b * T * C + h * D;
      float* lse = args.lse.f32() + (b * s.H + h) * T;
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
        const Rows r = block_rows(s, r0);
        const int64_t w = r.width();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r.m, w, D, scale, q + r0 * C3, C3, k + r.c0 * C3, C3,
                    0.f, p.data(), w);
        causal_softmax(p.data(), lse + r0, r);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r.m, D, w, 1.f, p.data(), w, v + r.c0 * C3, C3, 0.f,
                    out + r0 * C, C);
      }
    }
}

void backward_f32(const AttentionBackwardArgs& args) {
  const AttentionShape& s = args.shape;
  const int64_t T = s.T, C = s.C, D = C / s.H, C3 = 3 * C;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  const float* in = args.qkv.f32();
  float* din = args.dqkv.f32();
  std::vector<float> p(kRowBlock * T), ds(kRowBlock * T);  // one block's P and dP, then dS (m, width)
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.active_heads(); ++h) {
      const float* q = in + b * T * C3 + h * D;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = din + b * T * C3 + h * D;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const float* lse = args.lse.f32() + (b * s.H + h) * T;
      const float* dout = args.dout.f32() + b * T * C + h * D;
      for (int64_t r0 = 0; r0 < T; r0 += kRowBlock) {
        const Rows r = block_rows(s, r0);
        const int64_t w = r.width(), m = r.m, c0 = r.c0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, w, D, scale, q + r0 * C3, C3, k + c0 * C3, C3, 0.f,
                    p.data(), w);
        causal_probs(p.data(), lse + r0, r);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, w, D, 1.f, dout + r0 * C, C, v + c0 * C3, C3, 0.f,
                    ds.data(), w);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, D, m, 1.f, p.data(), w, dout + r0 * C, C, 1.f,
                    dv + c0 * C3, C3);
        causal_softmax_backward(ds.data(), p.data(), r, scale);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, w, 1.f, ds.data(), w, k + c0 * C3, C3, 1.f,
                    dq + r0 * C3, C3);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, D, m, 1.f, ds.data(), w, q + r0 * C3, C3, 1.f,
                    dk + c0 * C3, C3);
      }
    }
}

}  // namespace

// bf16 tensors (the dtype of the CUDA tensor-core kernels): the f32 path on
// their values, results rounded to bf16 - the operands exact, products,
// softmax and sums in fp32 as on the GPU, which also rounds P and dS to bf16
// between its two GEMMs (so the two agree to class B, not bit for bit).
// out and dqkv start from their bf16 values, so the heads a head subset
// leaves alone come back unchanged, and dqkv accumulates as on the GPU:
// bf16(dqkv + gradient).
void attention_forward(Ctx& ctx, const AttentionArgs& args) {
  if (args.qkv.dtype() == DType::f32) return forward_f32(args);
  const Tensor qkv = args.qkv.to(DType::f32);
  Tensor out = args.out.to(DType::f32);
  forward_f32({out, args.lse, qkv, args.shape});
  to_bf16(ctx, args.out, out);
}

void attention_backward(Ctx& ctx, const AttentionBackwardArgs& args) {
  if (args.qkv.dtype() == DType::f32) return backward_f32(args);
  const Tensor qkv = args.qkv.to(DType::f32), dout = args.dout.to(DType::f32), out = args.out.to(DType::f32);
  Tensor dqkv = args.dqkv.to(DType::f32);
  backward_f32({dqkv, dout, qkv, out, args.lse, args.shape});
  to_bf16(ctx, args.dqkv, dqkv);
}

}  // namespace sy::ops::cpu
