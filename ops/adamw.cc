#include "ops/adamw.h"

#include "ops/backend.h"

namespace sy::ops {

void adamw_update(Ctx& ctx, const std::vector<AdamWParam>& params, const AdamWConfig& c, int64_t step) {
  SY_CHECK(step >= 1, "adamw: step " << step << " (steps count from 1)");
  for (const AdamWParam& p : params) {
    check_shape(*p.grad, p.value->shape(), "adamw grad");
    check_shape(*p.m, p.value->shape(), "adamw m");
    check_shape(*p.v, p.value->shape(), "adamw v");
    check_device(ctx, "adamw_update", {p.value, p.grad, p.m, p.v});
    if (p.shadow) {
      check_shape(*p.shadow, p.value->shape(), "adamw bf16 shadow");
      check_dtype(*p.shadow, DType::bf16, "adamw bf16 shadow");
      check_device(ctx, "adamw_update", {p.shadow});
    }
  }
  SY_DISPATCH(ctx, adamw_update, ctx, params, c, step);
}

double grad_sq_sum(Ctx& ctx, const std::vector<const Tensor*>& grads) {
  for (const Tensor* g : grads) check_device(ctx, "grad_sq_sum", {g});
  SY_DISPATCH(ctx, grad_sq_sum, ctx, grads);
}

void clip_to_norm(Ctx& ctx, const std::vector<Tensor*>& grads, float norm, float max_norm) {
  for (const Tensor* g : grads) check_device(ctx, "clip_to_norm", {g});
  SY_DISPATCH(ctx, clip_to_norm, ctx, grads, norm, max_norm);
}

}  // namespace sy::ops
