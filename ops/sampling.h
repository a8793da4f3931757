// Drawing the next token from a model's output distribution (generation).
//
//   candidates  the top_k most probable tokens (every token when top_k = 0),
//               most probable first, ties to the lower id
//   q_i         = exp((log p_i - log p_max) / temperature) on the candidates
//               (softmax(logits / temperature) restricted to them), 0 elsewhere
//   next        the first candidate c with sum_{j <= c} q_j > u * sum_j q_j
//   temperature 0 is greedy: the most probable token (ties to the lower id).
//   vocab       > 0: only ids below it are candidates (a model whose
//               vocabulary is padded past its tokenizer's pieces: the ids
//               no piece decodes are never drawn); 0: every id
//
// p: (V) f32 probabilities (one softmax row). u: a uniform draw in (0, 1) the
// caller makes (counter-based, keyed by the seed and the position, so a seed
// gives the same text on every backend).
#pragma once
#include "core/tensor.h"

namespace sy::ops {

struct SamplingParams {
  float temperature = 1.f;  // >= 0
  int top_k = 0;            // 0: no cut
  int64_t vocab = 0;        // 0: every id; else ids [0, vocab) only
};

int32_t sample_token(Ctx& ctx, const Tensor& probs, const SamplingParams& p, float u);

namespace cpu {
int32_t sample_token(Ctx& ctx, const Tensor& probs, const SamplingParams& p, float u);
}  // namespace cpu

}  // namespace sy::ops
