#include "ops/heads.h"

#include <algorithm>
#include <vector>

namespace sy::ops::cpu {

void split_heads(Ctx&, Tensor& out, const Tensor& in, int64_t col0) {
  const int64_t H = out.dim(0), N = out.dim(1), D = out.dim(2), W = in.dim(1);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < N; ++n)
      std::copy_n(in.f32() + n * W + col0 + h * D, D, out.f32() + (h * N + n) * D);
}

void merge_heads(Ctx&, Tensor& out, const Tensor& in, int64_t col0) {
  const int64_t H = in.dim(0), N = in.dim(1), D = in.dim(2), W = out.dim(1);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < N; ++n)
      std::copy_n(in.f32() + (h * N + n) * D, D, out.f32() + n * W + col0 + h * D);
}

namespace {
// The source column (in the grouped row) of column c of the wide row.
int64_t grouped_column(int64_t c, const KvHeads& s) {
  const int64_t C = s.heads * s.head_dim, KV = s.kv_heads * s.head_dim, r = s.heads / s.kv_heads;
  if (c < C) return c;
  const int64_t part = c < 2 * C ? 0 : 1, within = c - C - part * C;  // k or v; its column there
  const int64_t h = within / s.head_dim, d = within % s.head_dim;
  return C + part * KV + (h / r) * s.head_dim + d;
}
}  // namespace

void expand_kv_heads(Ctx&, Tensor& out, const Tensor& in, const KvHeads& s) {
  const int64_t N = out.dim(0), W = out.dim(1), Wg = in.dim(1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < W; ++c) {
      const int64_t from = n * Wg + grouped_column(c, s);
      if (out.dtype() == DType::bf16) out.data<bf16_t>()[n * W + c] = in.data<bf16_t>()[from];
      else out.f32()[n * W + c] = in.f32()[from];
    }
}

void reduce_kv_heads(Ctx&, Tensor& out, const Tensor& in, const KvHeads& s) {
  const int64_t N = out.dim(0), Wg = out.dim(1), W = in.dim(1);
  const bool bf16 = out.dtype() == DType::bf16;
  const int64_t C = s.heads * s.head_dim;
  std::vector<float> row(Wg);
  for (int64_t n = 0; n < N; ++n) {
    std::fill(row.begin(), row.end(), 0.f);
    // k and v: each grouped column sums its query heads' from 0 in h's order
    // (the wide columns in order); q is copied as it is.
    for (int64_t c = C; c < W; ++c)
      row[grouped_column(c, s)] += bf16 ? bf16_to_f32(in.data<bf16_t>()[n * W + c].bits) : in.f32()[n * W + c];
    for (int64_t c = 0; c < Wg; ++c) {
      if (c < C && bf16) out.data<bf16_t>()[n * Wg + c] = in.data<bf16_t>()[n * W + c];
      else if (c < C) out.f32()[n * Wg + c] = in.f32()[n * W + c];
      else if (bf16) out.data<bf16_t>()[n * Wg + c].bits = f32_to_bf16(row[c]);
      else out.f32()[n * Wg + c] = row[c];
    }
  }
}

}  // namespace sy::ops::cpu
