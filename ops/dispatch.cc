#include "ops/dispatch.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check(Ctx& ctx, const Tensor& tokens, const Tensor& rows, const Route& r, const char* what) {
  SY_CHECK(tokens.ndim() == 2 && tokens.dim(0) == r.num_items,
           what << ": token tensor " << shape_str(tokens.shape()) << " for " << r.num_items << " items");
  check_shape(rows, {r.rows(), tokens.dim(1)}, what);
  check_device(ctx, what, {&tokens, &rows, &r.group, &r.slot, &r.offset, &r.count, &r.weight});
}
}  // namespace

void dispatch_forward(Ctx& ctx, Tensor& buf, const Tensor& x, const Route& r) {
  check(ctx, x, buf, r, "dispatch buf");
  check_dtype(x, DType::f32, "dispatch x");
  SY_CHECK(buf.dtype() == DType::f32 || buf.dtype() == DType::bf16,
           "dispatch buf: " << dtype_name(buf.dtype()) << " (f32 or bf16)");
  SY_DISPATCH(ctx, dispatch_forward, ctx, buf, x, r);
}

void dispatch_backward(Ctx& ctx, Tensor& dx, const Tensor& dbuf, const Route& r, bool accumulate) {
  check(ctx, dx, dbuf, r, "dispatch dbuf");
  SY_DISPATCH(ctx, dispatch_backward, ctx, dx, dbuf, r, accumulate);
}

void combine_forward(Ctx& ctx, Tensor& y, const Tensor& out, const Route& r) {
  check(ctx, y, out, r, "combine out");
  SY_DISPATCH(ctx, combine_forward, ctx, y, out, r);
}

void combine_backward(Ctx& ctx, Tensor& dout, Tensor& dweight, const Tensor& dy, const Tensor& out, const Route& r) {
  check(ctx, dy, out, r, "combine out");
  check_shape(dout, out.shape(), "combine dout");
  SY_CHECK(dout.dtype() == DType::f32 || dout.dtype() == DType::bf16,
           "combine_backward: dout is " << dtype_name(dout.dtype()) << "; f32 or bf16");
  check_shape(dweight, {r.assignments()}, "combine dweight");
  check_device(ctx, "combine_backward", {&dout, &dweight});
  SY_DISPATCH(ctx, combine_backward, ctx, dout, dweight, dy, out, r);
}

void residual_combine_forward(Ctx& ctx, Tensor& y, const Tensor& x, const Tensor& z, const Tensor& w, const Route& r) {
  SY_CHECK(r.k == 1, "residual_combine: a route of k = " << r.k << " (one assignment per item expected)");
  check(ctx, x, z, r, "residual_combine z");
  check_shape(y, x.shape(), "residual_combine y");
  check_shape(w, {r.num_items}, "residual_combine weights");
  check_device(ctx, "residual_combine_forward", {&y, &w});
  SY_DISPATCH(ctx, residual_combine_forward, ctx, y, x, z, w, r);
}

void residual_combine_backward(Ctx& ctx, Tensor& dx, Tensor& dz, Tensor& dw, const Tensor& dy, const Tensor& x,
                               const Tensor& z, const Tensor& w, const Route& r) {
  SY_CHECK(r.k == 1, "residual_combine: a route of k = " << r.k << " (one assignment per item expected)");
  check(ctx, x, z, r, "residual_combine z");
  check_shape(dx, x.shape(), "residual_combine dx");
  check_shape(dy, x.shape(), "residual_combine dy");
  check_shape(dz, z.shape(), "residual_combine dz");
  check_shape(w, {r.num_items}, "residual_combine weights");
  check_shape(dw, {r.num_items}, "residual_combine dweights");
  check_device(ctx, "residual_combine_backward", {&dx, &dz, &dw, &dy, &w});
  SY_DISPATCH(ctx, residual_combine_backward, ctx, dx, dz, dw, dy, x, z, w, r);
}

void dispatch_positions(Ctx& ctx, Tensor& pos, const Route& r, int64_t segment) {
  SY_CHECK(segment >= 1, "dispatch_positions: segment " << segment << " (at least 1 item per sequence)");
  check_dtype(pos, DType::i32, "dispatch_positions pos");
  check_shape(pos, {r.rows()}, "dispatch_positions pos");
  check_device(ctx, "dispatch_positions", {&pos, &r.group, &r.slot, &r.offset});
  SY_DISPATCH(ctx, dispatch_positions, ctx, pos, r, segment);
}

}  // namespace sy::ops
