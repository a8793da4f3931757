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
// wide: (N, 3 H D); grouped: (N, (H + 2G) D).
void check_kv(Ctx& ctx, const char* op, const Tensor& wide, const Tensor& grouped, const KvHeads& s) {
  SY_CHECK(s.heads > 0 && s.kv_heads > 0 && s.head_dim > 0 && s.heads % s.kv_heads == 0,
           op << ": " << s.kv_heads << " key/value heads for " << s.heads << " query heads of " << s.head_dim
              << " (they must divide them)");
  SY_CHECK(wide.ndim() == 2 && grouped.ndim() == 2 && wide.dim(0) == grouped.dim(0) &&
               wide.dim(1) == 3 * s.heads * s.head_dim && grouped.dim(1) == (s.heads + 2 * s.kv_heads) * s.head_dim,
           op << ": rows " << shape_str(wide.shape()) << " and " << shape_str(grouped.shape()) << " for " << s.heads
              << " query and " << s.kv_heads << " key/value heads of " << s.head_dim);
  SY_CHECK(wide.dtype() == grouped.dtype() && (wide.dtype() == DType::f32 || wide.dtype() == DType::bf16),
           op << ": " << dtype_name(wide.dtype()) << " and " << dtype_name(grouped.dtype())
              << " (f32 or bf16, both alike)");
  check_device(ctx, op, {&wide, &grouped});
}
}  // namespace

void expand_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& s) {
  check_kv(ctx, "expand_kv_heads", out, in, s);
  SY_DISPATCH(ctx, expand_kv_heads, ctx, out, in, s);
}

void reduce_kv_heads(Ctx& ctx, Tensor& out, const Tensor& in, const KvHeads& s) {
  check_kv(ctx, "reduce_kv_heads", in, out, s);
  SY_DISPATCH(ctx, reduce_kv_heads, ctx, out, in, s);
}

void split_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0) {
  check(ctx, "split_heads", out, in, col0);
  SY_DISPATCH(ctx, split_heads, ctx, out, in, col0);
}

void merge_heads(Ctx& ctx, Tensor& out, const Tensor& in, int64_t col0) {
  check(ctx, "merge_heads", in, out, col0);
  SY_DISPATCH(ctx, merge_heads, ctx, out, in, col0);
}

}  // namespace sy::ops
