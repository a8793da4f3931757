#include "ops/cross_entropy.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check_targets(const Tensor& targets, int64_t N) {
  check_dtype(targets, DType::i32, "cross_entropy targets");
  SY_CHECK(targets.ndim() == 1 && targets.dim(0) == N,
           "cross_entropy: targets " << shape_str(targets.shape()) << " for " << N << " rows");
}
}  // namespace

float cross_entropy_forward(Ctx& ctx, const CrossEntropyArgs& a) {
  SY_CHECK(a.logits.ndim() == 2, "cross_entropy: logits " << shape_str(a.logits.shape()) << " are not (N, V)");
  check_shape(a.probs, a.logits.shape(), "cross_entropy probs");
  check_targets(a.targets, a.logits.dim(0));
  check_device(ctx, "cross_entropy_forward", {&a.probs, &a.logits, &a.targets});
  SY_DISPATCH(ctx, cross_entropy_forward, ctx, a);
}

void cross_entropy_backward(Ctx& ctx, const CrossEntropyBackwardArgs& a) {
  SY_CHECK(a.probs.ndim() == 2, "cross_entropy: probs " << shape_str(a.probs.shape()) << " are not (N, V)");
  check_shape(a.dlogits, a.probs.shape(), "cross_entropy dlogits");
  check_targets(a.targets, a.probs.dim(0));
  check_device(ctx, "cross_entropy_backward", {&a.dlogits, &a.probs, &a.targets});
  SY_DISPATCH(ctx, cross_entropy_backward, ctx, a);
}

}  // namespace sy::ops
