// Token + position embedding.
//
//   out[n, :] = wte[tok[n], :] + wpe[n mod T, :]        n = b*T + t
//
// Shapes: tok (B*T) i32, wte (V, C), wpe (maxT, C), out (B*T, C). wpe may be
// undefined (rotary positions: model.position ROPE): out[n] = wte[tok[n]],
// and dwpe is undefined too.
// Backward: dwte[tok[n]] += dout[n]; dwpe[t] += dout[n]. Gradients accumulate.
#pragma once
#include "core/tensor.h"

namespace sy::ops {

struct EmbeddingArgs {
  Tensor& out;
  const Tensor& tokens;
  const Tensor& wte;
  const Tensor& wpe;  // undefined: no position table
  int64_t T;  // sequence length: position of row n is n mod T
};

struct EmbeddingBackwardArgs {
  Tensor& dwte;
  Tensor& dwpe;  // undefined when wpe is
  const Tensor& dout;
  const Tensor& tokens;
  int64_t T;
};

void embedding_forward(Ctx& ctx, const EmbeddingArgs& a);
void embedding_backward(Ctx& ctx, const EmbeddingBackwardArgs& a);

namespace cpu {
void embedding_forward(Ctx& ctx, const EmbeddingArgs& a);
void embedding_backward(Ctx& ctx, const EmbeddingBackwardArgs& a);
}  // namespace cpu

// The CUDA kernels (ops/cuda/embedding.cu; CUDA builds).
namespace cuda {
void embedding_forward(Ctx& ctx, const EmbeddingArgs& a);
void embedding_backward(Ctx& ctx, const EmbeddingBackwardArgs& a);
}  // namespace cuda

}  // namespace sy::ops
