// Softmax cross-entropy over the vocabulary, mean over positions.
//
//   p[n, :] = softmax(logits[n, :])     loss = -(1/N) sum_n log p[n, y_n]
//   dlogits[n, :] = scale * (p[n, :] - onehot(y_n)) / N
//
// Shapes: logits, probs (N, V); targets (N). Saved for backward: probs.
// dlogits is overwritten (it is the first gradient of the backward pass).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace sy::ops {

// Returns the mean loss; fills probs.
float cross_entropy_forward(Tensor& probs, const Tensor& logits, const std::vector<int32_t>& targets);
void cross_entropy_backward(Tensor& dlogits, const Tensor& probs,
                            const std::vector<int32_t>& targets, float scale = 1.f);

}  // namespace sy::ops
