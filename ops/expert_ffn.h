// Expert FFNs over the group-major buffer: rows [offset[g], offset[g+1]) go
// through expert g (a grouped GEMM: one GEMM pair per expert over its rows,
// each expert with its own hidden width H_g).
//
//   GELU:    pre = buf_g W1[g] + b1[g]   act = gelu(pre)                (ops/gelu.h)
//   SWIGLU:  pre = buf_g W1[g] + b1[g]   act = silu(pre[:, :H_g]) * pre[:, H_g:]
//            (ops/swiglu.h: W1[g] = [W_gate | W_up], one GEMM for both)
//   out_g = act W2[g] + b2[g]
//
// Parameter layout (packed, expert-major; ExpertLayout computes the offsets).
// P_g is expert g's pre-activation width: H_g (GELU) or 2 H_g (SWIGLU, gate
// columns [0, H_g), up columns [H_g, 2 H_g)). With S_g = H_0 + ... + H_{g-1}
// and Q_g = P_0 + ... + P_{g-1}:
//   W1: D*Q_G floats; expert g's (D, P_g) block, row-major, at D*Q_g
//   b1: Q_G floats;   expert g's (P_g) at Q_g
//   W2: D*S_G floats; expert g's (H_g, D) block, row-major, at D*S_g
//   b2: G*D floats;   expert g's (D) at g*D
// The tensors may have any shape with these element counts: with equal widths
// H this is exactly W1 (G, D, P), b1 (G, P), W2 (G, H, D), b2 (G, D). b1 and
// b2 may both be undefined Tensors (model.bias false): no biases, and their
// gradients are undefined too. Hugging Face's Mixtral names per expert:
// w1 = W_gate^T, w3 = W_up^T, w2 = W2^T.
// Activations: buf, out (R, D); pre holds each expert's rows packed the same
// way, expert g's (n_g, P_g) block at sum_{h<g} n_h P_h (n_g = offset[g+1] -
// offset[g]), ExpertLayout::pre_numel values in all; saved for backward.
// offset (G+1) with offset[G] = R and the widths are on the host (GEMM shapes
// are host values: the Route's one device-to-host copy).
// Backward (per expert, act and the activation's derivative recomputed from
// pre): the matmul and activation backwards; dbuf and every weight gradient
// accumulate, or dbuf is written (dbuf_accumulate false: every row belongs to
// one expert, so a fresh dbuf needs no zero fill and its GEMMs no read of it),
// and so are the weight and bias gradients with grads_accumulate false (all
// of them: an expert without rows gets zeros), the first backward of a step
// (ParamStore::zero_grad leaves them unwritten, not zero-filled).
// GELU experts compute exactly what they did before SWIGLU was added.
//
// bf16 mode (w1_bf16 and w2_bf16 given: the weights' bf16 shadows): every
// GEMM is matmul's bf16 mode (ops/matmul.h), its activation operand (buf,
// act, dout, dpre) rounded to bf16, fp32 accumulation and outputs; pre, the
// activation's fp32 value and derivative, biases and their gradients stay
// fp32. dpre is the fp32 gradient rounded (what the activation's backward
// writes in bf16), and db1 sums those rounded values, as matmul's db sums a
// bf16 dy; db2 sums dout's values (an f32 dout's, or a bf16 one's widened). The
// forward can hand back bf16(buf) and bf16(act) (packed as act: sum_g n_g H_g
// values); backward then takes buf as that bf16 tensor and act_bf16 for dW2,
// instead of rounding buf again and recomputing and rounding act from pre
// (the activation's derivative still comes from pre; with a bf16 pre the
// kept act is gelu of the unrounded value, below, so a recomputed one may
// differ from it by a bf16 step).
// In bf16 mode buf may also come as bf16, rounded by its producer (the
// dispatch, ops/dispatch.h): the GEMMs read it as it is, and buf_bf16 is buf.
// So may dout (combine_backward rounds it as it writes it): the GEMMs read it
// as it is and db2 sums the rounded values, as PyTorch autocast's bias
// gradient sums a bf16 output gradient.
// In bf16 mode with GELU, pre may be bf16: then the first GEMM is matmul's
// GELU epilogue (ops/matmul.h), z = bf16(buf) W1_16 + bf16(b1) in fp32,
// pre = bf16(z), act = bf16(gelu(z)), and backward's dpre = bf16(gelu'(pre)
// * bf16(dout) W2_16^T), the product not rounded before it is scaled: the
// FFN's widest tensors in half the bytes, as PyTorch autocast keeps them,
// and on CUDA no activation pass over them where cuBLASLt has the GELU_AUX
// and DGELU epilogues (runtime/layers.h's Mlp does the same).
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace sy::ops {

enum class FfnActivation { gelu, swiglu };

// The packed layout of G experts of model width D, hidden widths H_g and
// activation `act`.
struct ExpertLayout {
  int64_t D = 0;
  std::vector<int64_t> hidden;  // (G) H_g
  FfnActivation act = FfnActivation::gelu;

  ExpertLayout() = default;
  ExpertLayout(int64_t d, std::vector<int64_t> h, FfnActivation a = FfnActivation::gelu);
  int64_t groups() const { return static_cast<int64_t>(hidden.size()); }
  int64_t width(int64_t g) const { return hidden[g] * factor(); }     // P_g
  int64_t total_hidden() const { return start_.empty() ? 0 : start_.back(); }  // S_G
  int64_t total_width() const { return total_hidden() * factor(); }  // Q_G
  int64_t w1_offset(int64_t g) const { return D * start_[g] * factor(); }
  int64_t w2_offset(int64_t g) const { return D * start_[g]; }
  int64_t b1_offset(int64_t g) const { return start_[g] * factor(); }
  int64_t b2_offset(int64_t g) const { return g * D; }
  int64_t w1_numel() const { return D * total_width(); }
  int64_t w2_numel() const { return D * total_hidden(); }
  // Offset of expert g's block of pre for the row offsets `offset` (G+1).
  int64_t pre_offset(const std::vector<int32_t>& offset, int64_t g) const;
  int64_t pre_numel(const std::vector<int32_t>& offset) const { return pre_offset(offset, groups()); }
  bool uniform() const;

 private:
  int64_t factor() const { return act == FfnActivation::swiglu ? 2 : 1; }  // P_g / H_g
  std::vector<int64_t> start_;  // (G+1) S_g
};

struct ExpertWeights {
  const Tensor& w1;
  const Tensor& b1;  // undefined with b2: no biases
  const Tensor& w2;
  const Tensor& b2;
  const Tensor* w1_bf16 = nullptr;  // bf16 mode: the bf16 shadows of w1 and w2 (both or neither)
  const Tensor* w2_bf16 = nullptr;
};

struct ExpertGrads {
  Tensor& w1;
  Tensor& b1;
  Tensor& w2;
  Tensor& b2;
};

struct ExpertFfnArgs {
  Tensor& out;
  Tensor& pre;        // f32; bf16 in bf16 mode with GELU (see above)
  const Tensor& buf;  // f32; in bf16 mode also bf16
  const std::vector<int32_t>& offset;
  const ExpertLayout& layout;
  ExpertWeights w;
  Tensor* buf_bf16 = nullptr;  // bf16 mode, out (optional): bf16(buf)
  Tensor* act_bf16 = nullptr;  // bf16 mode, out (optional): bf16(act), packed
};

struct ExpertFfnBackwardArgs {
  Tensor& dbuf;
  ExpertGrads dw;
  const Tensor& dout;
  const Tensor& buf;  // f32; in bf16 mode also bf16 (the forward's buf_bf16)
  const Tensor& pre;
  const std::vector<int32_t>& offset;
  const ExpertLayout& layout;
  ExpertWeights w;
  const Tensor* act_bf16 = nullptr;  // bf16 mode (optional): the forward's act_bf16
  bool dbuf_accumulate = true;       // false: dbuf is written, not added to
  bool grads_accumulate = true;      // false: dw is written (every element), not added to
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
