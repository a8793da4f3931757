#include "ops/sinkhorn.h"

#include "ops/backend.h"

namespace sy::ops {

void sinkhorn_balance(Ctx& ctx, Tensor& h, const Tensor& keys, int iters) {
  SY_CHECK(keys.ndim() == 2, "sinkhorn_balance: keys " << shape_str(keys.shape()) << " are not (N, G)");
  check_dtype(keys, DType::f32, "sinkhorn_balance keys");
  SY_CHECK(keys.dim(0) >= 1 && keys.dim(1) >= 1,
           "sinkhorn_balance: keys " << shape_str(keys.shape()) << " (needs a token and an expert)");
  check_shape(h, {keys.dim(1)}, "sinkhorn_balance output");
  check_dtype(h, DType::f32, "sinkhorn_balance output");
  SY_CHECK(iters >= 1, "sinkhorn_balance: " << iters << " iterations (must be >= 1)");
  check_device(ctx, "sinkhorn_balance", {&h, &keys});
  SY_DISPATCH(ctx, sinkhorn_balance, ctx, h, keys, iters);
}

}  // namespace sy::ops
