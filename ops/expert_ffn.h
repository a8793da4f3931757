// Expert FFNs over the group-major buffer: rows [offset[g], offset[g+1]) go
// through expert g (a grouped GEMM: one GEMM pair per expert over its rows).
//
//   pre = buf_g W1[g] + b1[g]     act = gelu(pre)     out_g = act W2[g] + b2[g]
//
// Shapes: buf, out (R, D); pre (R, H) saved for backward; W1 (G, D, H),
// b1 (G, H), W2 (G, H, D), b2 (G, D); offset (G+1) with offset[G] = R, on the
// host (GEMM shapes are host values: the Route's one device-to-host copy).
// Backward (per expert, act and gelu'(pre) recomputed from pre in one pass):
// the matmul and gelu backwards; dbuf and every weight gradient accumulate.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace sy::ops {

struct ExpertWeights {
  const Tensor& w1;
  const Tensor& b1;
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
};

struct ExpertFfnBackwardArgs {
  Tensor& dbuf;
  ExpertGrads dw;
  const Tensor& dout;
  const Tensor& buf;
  const Tensor& pre;
  const std::vector<int32_t>& offset;
  ExpertWeights w;
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
