#include "ops/finite.h"

#include "ops/backend.h"

namespace sy::ops {

int64_t count_nonfinite(Ctx& ctx, const Tensor& x) {
  check_dtype(x, DType::f32, "count_nonfinite x");
  check_device(ctx, "count_nonfinite", {&x});
  SY_DISPATCH(ctx, count_nonfinite, ctx, x);
}

}  // namespace sy::ops
