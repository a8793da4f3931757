// Sinkhorn-balanced expert selection (Megatron-LM's "sinkhorn" load
// balancing; the balanced assignment of BASE layers, Lewis et al. 2021,
// relaxed to an entropic one as in Clark et al. 2022's S-BASE): a training
// batch's tokens select their experts as if the router's matrix had been
// scaled until every expert holds the same share of it.
//
// For selection keys a (N, G) (the router's logits, or its noisy selection
// keys), find f (N) and h (G) such that
//
//   P_ig = exp(a_ig + f_i + h_g)   has row sums 1/N and column sums 1/G,
//
// by T alternating Sinkhorn-Knopp steps (Sinkhorn 1967) in the log domain
// (exp(a) under- or overflows fp32 where logits spread), from h = 0:
//
//   f_i = -log N - LSE_g (a_ig + h_g)         (each row to 1/N)        (1)
//   h_g = -log G - LSE_i (a_ig + f_i)         (each column to 1/G)     (2)
//
// After a step the columns sum to 1/G (up to rounding) and the rows approach
// 1/N, at a linear rate for a matrix with positive entries. f_i is a
// constant of row i, so row i's top-k of P is the top-k of a_i + h: the
// router takes h as its selection bias over the keys a
// (TokensChooseParams::selection_keys and selection_bias) and never builds
// P. Selection only: the combine weights stay the router's probabilities
// and no gradient flows through h. An expert the keys neglect gets a large
// h_g, the favourite a small one; shifting a row of a by a constant changes
// f_i only.
//
// h (G) f32 out; keys (N, G) f32, N >= 1; iters T >= 1. A NaN or +inf key
// makes every h_g NaN (the logits it came from make the step's loss NaN too).
// The CPU reference sums in double; CUDA in fp32, each row's LSE over a
// warp and each column's over fixed chunks of rows merged in chunk order
// (deterministic; class F against the CPU).
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

void sinkhorn_balance(Ctx& ctx, Tensor& h, const Tensor& keys, int iters);

// The CPU reference (ops/cpu/sinkhorn.cc) and the CUDA kernels
// (ops/cuda/sinkhorn.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  void sinkhorn_balance(Ctx& ctx, Tensor& h, const Tensor& keys, int iters);
)

}  // namespace sy::ops
