#include "ops/random.h"

#include "ops/backend.h"

namespace sy::ops {

void random_uniform(Ctx& ctx, Tensor& out, const RandomKey& key, float lo, float hi) {
  check_dtype(out, DType::f32, "random_uniform");
  check_device(ctx, "random_uniform", {&out});
  SY_DISPATCH(ctx, random_uniform, ctx, out, key, lo, hi);
}

void random_normal(Ctx& ctx, Tensor& out, const RandomKey& key, float std) {
  check_dtype(out, DType::f32, "random_normal");
  check_device(ctx, "random_normal", {&out});
  SY_DISPATCH(ctx, random_normal, ctx, out, key, std);
}

void random_gumbel(Ctx& ctx, Tensor& out, const RandomKey& key, float scale) {
  check_dtype(out, DType::f32, "random_gumbel");
  check_device(ctx, "random_gumbel", {&out});
  SY_DISPATCH(ctx, random_gumbel, ctx, out, key, scale);
}

}  // namespace sy::ops
