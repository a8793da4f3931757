// Expert FFNs over the group-major buffer: rows [offset[g], offset[g+1]) go
// through expert g (a grouped GEMM: one GEMM pair per expert over its rows).
//
//   GELU:    pre = buf_g W1[g] + b1[g]   act = gelu(pre)     (ops/gelu.h)
//   SWIGLU:  pre = buf_g W1[g] + b1[g]   act = silu(pre[:, :H]) * pre[:, H:]
//            (ops/swiglu.h: W1[g] = [W_gate | W_up], one GEMM for both)
//   out_g = act W2[g] + b2[g]
//
// Shapes: buf, out (R, D); W2 (G, H, D), b2 (G, D); offset (G+1) with
// offset[G] = R, on the host (GEMM shapes are host values: the Route's one
// device-to-host copy). GELU: W1 (G, D, H), b1 (G, H), pre (R, H). SWIGLU:
// W1 (G, D, 2H) gate|up (columns [0, H) the gate, [H, 2H) the up
// projection), b1 (G, 2H), pre (R, 2H). pre is saved for backward. b1 and b2
// may both be undefined Tensors (model.bias: false): no biases, and their
// gradients are undefined too. Hugging Face's Mixtral names per expert:
// w1 = W_gate^T, w3 = W_up^T, w2 = W2^T.
// Backward (per expert, act recomputed from pre): the matmul and activation
// backwards; dbuf and every weight gradient accumulate. GELU experts compute
// exactly what they did before SWIGLU was added.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace sy::ops {

enum class FfnActivation { gelu, swiglu };

struct ExpertWeights {
  const Tensor& w1;
  const Tensor& b1;  // undefined with b2: no biases
  const Tensor& w2;
  const Tensor& b2;
};

struct ExpertGrads {
  Tensor& w1;
  Tensor& b1;
  Tensor& w2;
  Tensor& b2;
};

struct ExpertFfnArgs {
  Tensor& out;
  Tensor& pre;
  const Tensor& buf;
  const std::vector<int32_t>& offset;
  ExpertWeights w;
  FfnActivation act = FfnActivation::gelu;
};

struct ExpertFfnBackwardArgs {
  Tensor& dbuf;
  ExpertGrads dw;
  const Tensor& dout;
  const Tensor& buf;
  const Tensor& pre;
  const std::vector<int32_t>& offset;
  ExpertWeights w;
  FfnActivation act = FfnActivation::gelu;
};

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a);
void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a);

namespace cpu {
void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a);
void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a);
}  // namespace cpu

// The CUDA kernels (ops/cuda/expert_ffn.cu; CUDA builds).
namespace cuda {
void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a);
void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a);
}  // namespace cuda

}  // namespace sy::ops
