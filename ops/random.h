// Counter-based random tensors (core/philox.h): element i of `out` is a
// function of (key.seed, key.stream, key.step, key.offset + i) alone, so the
// CPU and a kernel draw the same bits and a draw is independent of how the
// work is split.
//
//   random_uniform: out_i = lo + (hi - lo) u_i,  u_i = bits_to_uniform(word 0) in (0, 1)
//   random_normal:  out_i = std * sqrt(-2 log u) cos(2 pi v)   (Box-Muller on words 0, 1)
//   random_gumbel:  out_i = -scale * log(-log u)               (Gumbel(0, scale))
// The words are bit-identical across backends; normal and Gumbel values go
// through log/cos/sqrt in fp32, whose last bit may differ between libm and
// CUDA's (a few ulp: compare them with a tolerance, not bitwise).
#pragma once
#include "core/philox.h"
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

void random_uniform(Ctx& ctx, Tensor& out, const RandomKey& key, float lo, float hi);
void random_normal(Ctx& ctx, Tensor& out, const RandomKey& key, float std);
void random_gumbel(Ctx& ctx, Tensor& out, const RandomKey& key, float scale);

// The CPU reference (ops/cpu/random.cc) and the CUDA kernels (ops/cuda/random.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void random_uniform(Ctx& ctx, Tensor& out, const RandomKey& key, float lo, float hi);
  void random_normal(Ctx& ctx, Tensor& out, const RandomKey& key, float std);
  void random_gumbel(Ctx& ctx, Tensor& out, const RandomKey& key, float scale);
)

}  // namespace sy::ops
