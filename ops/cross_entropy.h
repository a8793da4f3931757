// Softmax cross-entropy over the vocabulary, mean over positions.
//
//   p[n, :] = softmax(logits[n, :])     loss = -(1/N) sum_n log p[n, y_n]
//   dlogits[n, :] = scale * (p[n, :] - onehot(y_n)) / N
//
// Shapes: logits, probs (N, V); targets (N) i32. Saved for backward: probs.
// dlogits is overwritten (it is the first gradient of the backward pass).
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

struct CrossEntropyArgs {
  Tensor& probs;
  const Tensor& logits;
  const Tensor& targets;
};

struct CrossEntropyBackwardArgs {
  Tensor& dlogits;
  const Tensor& probs;
  const Tensor& targets;
  float scale = 1.f;  // the upstream gradient of the loss
};

// Returns the mean loss (a host value: one synchronisation per step on a device).
float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a);
void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a);

// The CPU reference (ops/cpu/cross_entropy.cc) and the CUDA kernels (ops/cuda/cross_entropy.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a);
  void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a);
)

}  // namespace sy::ops
