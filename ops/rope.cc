#include "ops/rope.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const RopeArgs& a, const char* op) {
  SY_CHECK(a.x.ndim() == 2, "rope: x " << shape_str(a.x.shape()) << " is not (N, W)");
  SY_CHECK(a.head_dim > 0 && a.head_dim % 2 == 0, "rope: head size " << a.head_dim << " is not even");
  SY_CHECK(a.heads >= 0 && a.heads * a.head_dim <= a.x.dim(1),
           "rope: " << a.heads << " heads of " << a.head_dim << " do not fit in rows of " << a.x.dim(1));
  SY_CHECK(a.base > 1, "rope: base " << a.base << " must be > 1");
  if (a.positions.defined()) {
    check_dtype(a.positions, DType::i32, "rope positions");
    check_shape(a.positions, {a.x.dim(0)}, "rope positions");
  } else {
    SY_CHECK(a.seq_len > 0, "rope: no positions and seq_len " << a.seq_len);
  }
  check_device(ctx, op, {&a.x, &a.positions});
}
}  // namespace

void rope_forward(Ctx& ctx, const RopeArgs& a) {
  check(ctx, a, "rope_forward");
  SY_DISPATCH(ctx, rope_forward, ctx, a);
}

void rope_backward(Ctx& ctx, const RopeBackwardArgs& a) {
  check(ctx, a, "rope_backward");
  SY_DISPATCH(ctx, rope_backward, ctx, a);
}

}  // namespace sy::ops
