// Expert FFNs over the group-major buffer: rows [offset[g], offset[g+1]) go
// through expert g (a grouped GEMM: one GEMM pair per expert over its rows,
// each expert with its own hidden width H_g).
//
//   pre = buf_g W1[g] + b1[g]     act = gelu(pre)     out_g = act W2[g] + b2[g]
//
// Parameter layout (packed, expert-major; ExpertLayout computes the offsets):
// with S_g = H_0 + ... + H_{g-1} (the hidden widths of the experts before g),
//   W1: D*S_G floats; expert g's (D, H_g) block, row-major, at D*S_g
//   b1: S_G floats;   expert g's (H_g) at S_g
//   W2: D*S_G floats; expert g's (H_g, D) block, row-major, at D*S_g
//   b2: G*D floats;   expert g's (D) at g*D
// The tensors may have any shape with these element counts: with equal widths
// H this is exactly W1 (G, D, H), b1 (G, H), W2 (G, H, D), b2 (G, D).
// Activations: buf, out (R, D); pre holds each expert's rows packed the same
// way, expert g's (n_g, H_g) block at P_g = sum_{h<g} n_h H_h (n_g = offset[g+1]
// - offset[g]), sum_g n_g H_g floats in all (ExpertLayout::pre_numel); saved for
// backward. offset (G+1) with offset[G] = R and the widths are on the host
// (GEMM shapes are host values: the Route's one device-to-host copy).
// Backward (per expert, act and gelu'(pre) recomputed from pre in one pass):
// the matmul and gelu backwards; dbuf and every weight gradient accumulate.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace sy::ops {

// The packed layout of G experts of model width D and hidden widths H_g.
struct ExpertLayout {
  int64_t D = 0;
  std::vector<int64_t> hidden;  // (G) H_g

  ExpertLayout() = default;
  ExpertLayout(int64_t d, std::vector<int64_t> h);
  int64_t groups() const { return static_cast<int64_t>(hidden.size()); }
  int64_t hidden_before(int64_t g) const { return start_[g]; }  // S_g
  int64_t total_hidden() const { return start_.empty() ? 0 : start_.back(); }
  int64_t w_offset(int64_t g) const { return D * start_[g]; }  // W1 and W2
  int64_t b1_offset(int64_t g) const { return start_[g]; }
  int64_t b2_offset(int64_t g) const { return g * D; }
  int64_t w_numel() const { return D * total_hidden(); }
  // Offset of expert g's block of pre for the row offsets `offset` (G+1).
  int64_t pre_offset(const std::vector<int32_t>& offset, int64_t g) const;
  int64_t pre_numel(const std::vector<int32_t>& offset) const { return pre_offset(offset, groups()); }
  bool uniform() const;

 private:
  std::vector<int64_t> start_;  // (G+1) S_g
};

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
  const ExpertLayout& layout;
  ExpertWeights w;
};

struct ExpertFfnBackwardArgs {
  Tensor& dbuf;
  ExpertGrads dw;
  const Tensor& dout;
  const Tensor& buf;
  const Tensor& pre;
  const std::vector<int32_t>& offset;
  const ExpertLayout& layout;
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
