// GroupedExperts: the expert FFNs a rank holds (all G on one rank, G / ep
// under expert parallelism), run over the expert-major buffer the
// TokenDispatcher builds (ops/expert_ffn.h: one GEMM pair per expert).
//
// Expert g has hidden width H_g (moe.expert_hidden; all equal by default).
// Parameters are the packed layout of ops/expert_ffn.h over the experts this
// rank holds, in global expert order: w1 (D*sum P_g), b1 (sum P_g), w2
// (D*sum H_g), b2 (G, C), with P_g = H_g (GELU) or 2 H_g (SwiGLU: w1 holds
// [W_gate | W_up]); without biases (model.bias false) b1 and b2 do not
// exist. The whole tensors over all G experts are drawn and each rank keeps
// its experts' slice (ParamStore::add_packed_rows; Param records each
// expert's piece and the shard's place in the whole tensor), so a seed gives
// the same experts at every expert-parallel size and expert g's weights sit
// at the same place in the whole tensor whatever rank holds them. With equal
// widths the shards are exactly w1 (G, C, P), b1 (G, P), w2 (G, H, C),
// b2 (G, C) by rows (ParamStore::add_rows), as before heterogeneous experts.
#pragma once
#include <string>
#include <vector>

#include "ops/expert_ffn.h"
#include "runtime/layers.h"
#include "runtime/params.h"

namespace sy {

class GroupedExperts {
 public:
  // Holds experts [e0, e1) of hidden.size(); hidden: every expert's width.
  GroupedExperts(Ctx& ctx, ParamStore& ps, const std::string& name, const std::vector<int64_t>& hidden, int64_t C,
                 int64_t e0, int64_t e1, Rng& rng, float std, float out_std, const FfnOptions& ffn = {});
  // buf (R, C) expert-major, f32 or (bf16 mode) bf16; offsets (local
  // experts + 1), on the host.
  Tensor forward(const Tensor& buf, const std::vector<int32_t>& offsets);
  // The dtype the experts' GEMMs read buf in: bf16 where the store keeps
  // bf16 shadows (a bf16 buf is read as it is), else f32.
  DType operand_dtype() const { return w1_->value_bf16.defined() ? DType::bf16 : DType::f32; }
  // dbuf; the experts' weight (and bias) gradients written where they are
  // unwritten (the step's first backward after ParamStore::zero_grad), else
  // added to (a later micro-batch).
  Tensor backward(const Tensor& dout);
  void release() { buf_ = pre_ = act16_ = Tensor(); }
  // The local experts' layout (widths in local order, activation).
  const ops::ExpertLayout& layout() const { return layout_; }
  // Forward FLOPs of the last forward's expert GEMMs: sum_g 2 n_g C (P_g + H_g)
  // (two GEMMs for GELU, three for SwiGLU's gate, up and down).
  double forward_flops() const { return flops_; }
  // Forward FLOPs of one row through expert g (local index): 2 C (P_g + H_g).
  double row_flops(int64_t g) const { return 2.0 * C_ * (layout_.width(g) + layout_.hidden[g]); }

 private:
  Ctx& ctx_;
  int64_t C_;
  ops::ExpertLayout layout_;
  Param *w1_, *b1_ = nullptr, *w2_, *b2_ = nullptr;
  const Tensor none_;  // an absent bias
  // The op's weights, with the bf16 shadows when the store keeps them.
  ops::ExpertWeights weights() const;
  double flops_ = 0;
  // saved for backward
  Tensor buf_, pre_;  // buf (bf16(buf) in bf16 mode), pre (bf16 in bf16 mode with GELU)
  Tensor act16_;      // bf16 mode: bf16(act), packed as act
  std::vector<int32_t> offsets_;
};

}  // namespace sy
