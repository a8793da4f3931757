#include "ops/cross_entropy.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check_rows(const Tensor& logits, const Tensor& stats, const Tensor& targets) {
  SY_CHECK(logits.ndim() == 2, "cross_entropy: logits " << shape_str(logits.shape()) << " are not (N, V)");
  check_dtype(logits, DType::f32, "cross_entropy logits");
  const int64_t N = logits.dim(0);
  check_shape(stats, {N, 2}, "cross_entropy stats");
  check_dtype(stats, DType::f32, "cross_entropy stats");
  check_dtype(targets, DType::i32, "cross_entropy targets");
  SY_CHECK(targets.ndim() == 1 && targets.dim(0) == N,
           "cross_entropy: targets " << shape_str(targets.shape()) << " for " << N << " rows");
}
}  // namespace

float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a) {
  check_rows(a.logits, a.stats, a.targets);
  check_device(ctx, "cross_entropy_forward", {&a.stats, &a.logits, &a.targets});
  SY_DISPATCH(ctx, cross_entropy_forward, ctx, a);
}

void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a) {
  check_rows(a.logits, a.stats, a.targets);
  check_shape(a.dlogits, a.logits.shape(), "cross_entropy dlogits");
  check_dtype(a.dlogits, DType::f32, "cross_entropy dlogits");
  SY_CHECK(a.dlogits.raw() != a.logits.raw(), "cross_entropy_backward: dlogits may not alias the logits");
  check_device(ctx, "cross_entropy_backward", {&a.dlogits, &a.logits, &a.stats, &a.targets});
  SY_DISPATCH(ctx, cross_entropy_backward, ctx, a);
}

}  // namespace sy::ops
