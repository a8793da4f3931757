#include "runtime/grouped_experts.h"

#include "ops/expert_ffn.h"

namespace sy {

GroupedExperts::GroupedExperts(Ctx& ctx, ParamStore& ps, const std::string& name, int64_t G, int64_t C, int64_t H,
                               int64_t e0, int64_t e1, Rng& rng, float std, float out_std, const FfnOptions& ffn)
    : ctx_(ctx), C_(C), H_(H), act_(ffn.act) {
  const int64_t P = act_ == ops::FfnActivation::swiglu ? 2 * H : H;  // gate|up, or H
  w1_ = ps.add_rows(name + ".experts.w1", {G, C, P}, e0, e1, rng, std, true);
  if (ffn.bias) b1_ = ps.add_rows(name + ".experts.b1", {G, P}, e0, e1, rng, 0.f, false);
  w2_ = ps.add_rows(name + ".experts.w2", {G, H, C}, e0, e1, rng, out_std, true);
  if (ffn.bias) b2_ = ps.add_rows(name + ".experts.b2", {G, C}, e0, e1, rng, 0.f, false);
}

Tensor GroupedExperts::forward(const Tensor& buf, const std::vector<int32_t>& offsets) {
  buf_ = buf;
  offsets_ = offsets;
  pre_ = Tensor::empty({buf.dim(0), w1_->shape[2]}, DType::f32, ctx_);
  Tensor out = Tensor::empty({buf.dim(0), C_}, DType::f32, ctx_);
  const Tensor none;
  ops::expert_ffn_forward(ctx_, {out, pre_, buf, offsets_,
                                 {w1_->value, b1_ ? b1_->value : none, w2_->value, b2_ ? b2_->value : none}, act_});
  return out;
}

Tensor GroupedExperts::backward(const Tensor& dout) {
  Tensor dbuf = Tensor::zeros(buf_.shape(), DType::f32, ctx_);
  Tensor no_db1, no_db2;
  const Tensor none;
  ops::expert_ffn_backward(ctx_, {dbuf, {w1_->grad, b1_ ? b1_->grad : no_db1, w2_->grad, b2_ ? b2_->grad : no_db2},
                                  dout, buf_, pre_, offsets_,
                                  {w1_->value, b1_ ? b1_->value : none, w2_->value, b2_ ? b2_->value : none}, act_});
  return dbuf;
}

}  // namespace sy
