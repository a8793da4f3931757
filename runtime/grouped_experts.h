// GroupedExperts: the expert FFNs a rank holds (all G on one rank, G / ep
// under expert parallelism), run over the expert-major buffer the
// TokenDispatcher builds (ops/expert_ffn.h: one GEMM pair per expert).
//
// Parameters w1 (G, C, H), b1 (G, H), w2 (G, H, C), b2 (G, C) are drawn whole
// and sharded by rows (ParamStore::add_rows), so a seed gives the same
// experts at every expert-parallel size. SwiGLU experts: w1 (G, C, 2H) holds
// [W_gate | W_up] and b1 (G, 2H) (ops/expert_ffn.h); without biases
// (model.bias false) b1 and b2 do not exist.
#pragma once
#include <string>
#include <vector>

#include "runtime/layers.h"
#include "runtime/params.h"

namespace sy {

class GroupedExperts {
 public:
  // Holds experts [e0, e1) of G.
  GroupedExperts(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t G, int64_t C, int64_t H, int64_t e0,
                 int64_t e1, Rng& rng, float std, float out_std, const FfnOptions& ffn = {});
  // buf (R, C) expert-major; offsets (local experts + 1), on the host.
  Tensor forward(const Tensor& buf, const std::vector<int32_t>& offsets);
  Tensor backward(const Tensor& dout);
  int64_t hidden() const { return H_; }
  ops::FfnActivation activation() const { return act_; }

 private:
  Ctx& ctx_;
  int64_t C_, H_;
  ops::FfnActivation act_;
  Param *w1_, *b1_ = nullptr, *w2_, *b2_ = nullptr;
  // saved for backward
  Tensor buf_, pre_;
  std::vector<int32_t> offsets_;
};

}  // namespace sy
