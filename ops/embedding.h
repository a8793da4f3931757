// Token + position embedding.
//
//   out[n, :] = wte[tok[n], :] + wpe[n mod T, :]        n = b*T + t
//
// Shapes: tok (B*T), wte (V, C), wpe (maxT, C), out (B*T, C).
// Backward: dwte[tok[n]] += dout[n]; dwpe[t] += dout[n]. Gradients accumulate.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace sy::ops {

using Tokens = std::vector<int32_t>;

void embedding_forward(Tensor& out, const Tokens& tok, int64_t T, const Tensor& wte,
                       const Tensor& wpe);
void embedding_backward(Tensor& dwte, Tensor& dwpe, const Tensor& dout, const Tokens& tok,
                        int64_t T);

}  // namespace sy::ops
