#include "runtime/grouped_experts.h"

namespace sy {

GroupedExperts::GroupedExperts(Ctx& ctx, ParamStore& ps, const std::string& name, const std::vector<int64_t>& hidden,
                               int64_t C, int64_t e0, int64_t e1, Rng& rng, float std, float out_std,
                               const FfnOptions& ffn)
    : ctx_(ctx), C_(C), layout_(C, std::vector<int64_t>(hidden.begin() + e0, hidden.begin() + e1), ffn.act) {
  const int64_t G = static_cast<int64_t>(hidden.size());
  const ops::ExpertLayout all(C, hidden, ffn.act);
  if (all.uniform()) {
    const int64_t H = hidden[0], P = all.width(0);  // P: H, or 2H for SwiGLU's gate|up
    w1_ = ps.add_rows(name + ".experts.w1", {G, C, P}, e0, e1, rng, std, true);
    if (ffn.bias) b1_ = ps.add_rows(name + ".experts.b1", {G, P}, e0, e1, rng, 0.f, false);
    w2_ = ps.add_rows(name + ".experts.w2", {G, H, C}, e0, e1, rng, out_std, true);
    if (ffn.bias) b2_ = ps.add_rows(name + ".experts.b2", {G, C}, e0, e1, rng, 0.f, false);
    return;
  }
  // Packed: the same draws in the same order (whole tensors, experts in
  // global order); a row is one expert's piece, (C, P_g), (P_g), (H_g, C).
  std::vector<Shape> w1(G), b1(G), w2(G);
  for (int64_t g = 0; g < G; ++g) w1[g] = {C, all.width(g)}, b1[g] = {all.width(g)}, w2[g] = {hidden[g], C};
  w1_ = ps.add_packed_rows(name + ".experts.w1", w1, e0, e1, rng, std, true);
  if (ffn.bias) b1_ = ps.add_packed_rows(name + ".experts.b1", b1, e0, e1, rng, 0.f, false);
  w2_ = ps.add_packed_rows(name + ".experts.w2", w2, e0, e1, rng, out_std, true);
  if (ffn.bias) b2_ = ps.add_rows(name + ".experts.b2", {G, C}, e0, e1, rng, 0.f, false);
}

ops::ExpertWeights GroupedExperts::weights() const {
  const bool bf16 = w1_->value_bf16.defined();
  return {w1_->value,
          b1_ ? b1_->value : none_,
          w2_->value,
          b2_ ? b2_->value : none_,
          bf16 ? &w1_->value_bf16 : nullptr,
          bf16 ? &w2_->value_bf16 : nullptr};
}

Tensor GroupedExperts::forward(const Tensor& buf, const std::vector<int32_t>& offsets) {
  offsets_ = offsets;
  // bf16 mode keeps buf and act as the GEMMs read them (bf16; buf as given
  // when the dispatcher rounded it): what backward's weight gradients need,
  // without rounding again or recomputing act. With GELU, pre is bf16 too
  // (ops/expert_ffn.h).
  const bool bf16 = operand_dtype() == DType::bf16;
  const bool pre16 = bf16 && layout_.act == ops::FfnActivation::gelu;
  pre_ = Tensor::empty({layout_.pre_numel(offsets_)}, pre16 ? DType::bf16 : DType::f32, ctx_);
  Tensor out = Tensor::empty({buf.dim(0), C_}, DType::f32, ctx_);
  Tensor buf16;
  act16_ = Tensor();
  ops::expert_ffn_forward(ctx_, {out, pre_, buf, offsets_, layout_, weights(), bf16 ? &buf16 : nullptr,
                                 bf16 ? &act16_ : nullptr});
  buf_ = buf16.defined() ? buf16 : buf;  // (an empty buffer may come back without its bf16 copy)
  flops_ = 0;
  for (int64_t g = 0; g < layout_.groups(); ++g)
    flops_ += static_cast<double>(offsets_[g + 1] - offsets_[g]) * row_flops(g);
  return out;
}

Tensor GroupedExperts::backward(const Tensor& dout) {
  // Written by the experts' GEMMs, every row (no zero fill); f32 even where buf_ is bf16.
  Tensor dbuf = Tensor::empty(buf_.shape(), DType::f32, ctx_);
  Tensor no_db1, no_db2;
  // The step's first backward writes the weight gradients (ParamStore::zero_grad
  // left them unwritten, not zero-filled); later ones (micro-batches) add.
  std::vector<Param*> mine{w1_, w2_};
  if (b1_) mine.push_back(b1_), mine.push_back(b2_);
  for (Param* p : mine)
    SY_CHECK(p->grad_unwritten == w1_->grad_unwritten, p->name << "'s gradient is " << (p->grad_unwritten ? "un" : "")
                                                              << "written, " << w1_->name << "'s not");
  ops::ExpertFfnBackwardArgs args{dbuf, {w1_->grad, b1_ ? b1_->grad : no_db1, w2_->grad, b2_ ? b2_->grad : no_db2},
                                  dout, buf_, pre_, offsets_, layout_, weights(),
                                  act16_.defined() ? &act16_ : nullptr, /*dbuf_accumulate=*/false};
  args.grads_accumulate = !w1_->grad_unwritten;
  ops::expert_ffn_backward(ctx_, args);
  for (Param* p : mine) p->grad_unwritten = false;
  return dbuf;
}

}  // namespace sy
