#include "ops/heads.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const char* op, const Tensor& heads, const Tensor& packed, int64_t col0) {
  SY_CHECK(heads.ndim() == 3 && packed.ndim() == 2 && heads.dim(1) == packed.dim(0),
           op << ": heads " << shape_str(heads.shape()) << ", packed rows " << shape_str(packed.shape()));
  SY_CHECK(col0 >= 0 && col0 + heads.dim(0) * heads.dim(2) <= packed.dim(1),
           op << ": columns [" << col0 << ", " << col0 + heads.dim(0) * heads.dim(2) << ") of " << packed.dim(1));
  check_dtype(heads, DType::f32, op);
  check_dtype(packed, DType::f32, op);
  check_device(ctx, op, {&heads, &packed});
}
}  // namespace

void split_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0) {
  check(ctx, "split_heads", out, in, col0);
  SY_DISPATCH(ctx, split_heads, ctx, out, in, col0);
}

void merge_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0) {
  check(ctx, "merge_heads", in, out, col0);
  SY_DISPATCH(ctx, merge_heads, ctx, out, in, col0);
}

}  // namespace sy::ops
