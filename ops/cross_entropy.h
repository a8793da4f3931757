// Softmax cross-entropy over the vocabulary, mean over positions.
//
//   m_n = max_v l[n, v]      Z_n = sum_v e^(l[n, v] - m_n)
//   p[n, v] = e^(l[n, v] - m_n) / Z_n
//   loss = -(1/N) sum_n log p[n, y_n] = (1/N) sum_n (log Z_n - (l[n, y_n] - m_n))
//   dlogits[n, :] = scale * (p[n, :] - onehot(y_n)) / N
//
// Shapes: logits (N, V) f32; targets (N) i32; stats (N, 2) f32.
// Saved for backward: stats[n] = (m_n, 1 / Z_n), and the logits themselves.
// The backward recomputes p from them, as FlashAttention recomputes its
// scores: no (N, V) probabilities are kept between the passes (N V 4 bytes:
// 2 GiB at 16k tokens and a 32k vocabulary), and on a GPU the pair moves
// the logits three times (read, read, write dlogits) where saving p moved
// them seven. dlogits is overwritten (the first gradient of the backward)
// and may not alias the logits.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

struct CrossEntropyArgs {
  Tensor& stats;  // (N, 2): (m_n, 1 / Z_n), written
  const Tensor& logits;
  const Tensor& targets;
};

struct CrossEntropyBackwardArgs {
  Tensor& dlogits;
  const Tensor& logits;  // the forward's
  const Tensor& stats;   // the forward's
  const Tensor& targets;
  float scale = 1.f;  // the upstream gradient of the loss
};

// Returns the mean loss (a host value: one synchronisation per step on a
// device). Targets must lie in [0, V): the CPU refuses others with one line;
// on a GPU, whose kernel cannot throw, such a row's loss is NaN (the
// trainer's finiteness check names it) and its gradient has no one-hot term.
float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a);
void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a);

// The CPU reference (ops/cpu/cross_entropy.cc) and the CUDA kernels (ops/cuda/cross_entropy.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a);
  void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a);
)

}  // namespace sy::ops
