#include "ops/heads.h"

#include <algorithm>

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

}  // namespace sy::ops::cpu
