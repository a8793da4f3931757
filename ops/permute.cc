#include "ops/permute.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const char* op, const Tensor& out, const Tensor& in, const Tensor& index) {
  SY_CHECK(in.ndim() == 2, op << ": rows " << shape_str(in.shape()) << " are not (R, D)");
  check_dtype(index, DType::i64, op);
  check_shape(index, {in.dim(0)}, op);
  check_shape(out, in.shape(), op);
  check_dtype(out, in.dtype(), op);
  check_device(ctx, op, {&out, &in, &index});
}
}  // namespace

void gather_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index) {
  SY_CHECK(in.ndim() == 2 && out.ndim() == 2 && out.dim(1) == in.dim(1),
           "gather_rows: rows " << shape_str(out.shape()) << " from " << shape_str(in.shape()));
  check_dtype(index, DType::i64, "gather_rows");
  check_shape(index, {out.dim(0)}, "gather_rows");
  check_dtype(out, in.dtype(), "gather_rows");
  check_device(ctx, "gather_rows", {&out, &in, &index});
  SY_DISPATCH(ctx, gather_rows, ctx, out, in, index);
}

void scatter_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index) {
  check(ctx, "scatter_rows", out, in, index);
  SY_DISPATCH(ctx, scatter_rows, ctx, out, in, index);
}

}  // namespace sy::ops
