#include "ops/decode_attention.h"

#include "ops/backend.h"

namespace sy::ops {

void decode_attention(Ctx& ctx, const DecodeAttentionArgs& a) {
  const char* op = "decode_attention";
  SY_CHECK(a.heads > 0 && a.kv_heads > 0 && a.heads % a.kv_heads == 0,
           op << ": " << a.kv_heads << " key/value heads for " << a.heads << " query heads (they must divide them)");
  const int64_t HD = a.q.numel(), D = HD / a.heads;
  SY_CHECK(a.q.ndim() == 1 && HD % a.heads == 0 && D > 0 && a.o.ndim() == 1 && a.o.numel() == HD,
           op << ": q " << shape_str(a.q.shape()) << ", o " << shape_str(a.o.shape()) << " for " << a.heads << " heads");
  for (const Tensor* t : {&a.k, &a.v})
    SY_CHECK(t->ndim() == 2 && t->dim(1) == a.kv_heads * D && t->dim(0) >= a.n,
             op << ": cache " << shape_str(t->shape()) << " for " << a.n << " positions of " << a.kv_heads
                << " heads of " << D);
  SY_CHECK(a.n >= 1, op << ": n = " << a.n << " (the new token's own position is cached first)");
  for (const Tensor* t : {static_cast<const Tensor*>(&a.o), &a.q, &a.k, &a.v}) check_dtype(*t, DType::f32, op);
  check_device(ctx, op, {&a.o, &a.q, &a.k, &a.v});
  SY_DISPATCH_CPU_ONLY(ctx, decode_attention, ctx, a);
}

}  // namespace sy::ops
