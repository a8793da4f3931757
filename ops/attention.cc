#include "ops/attention.h"

#include <initializer_list>

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check_qkv(Ctx&, const Tensor& qkv, const AttentionShape& s) {
  SY_CHECK(s.H > 0 && s.C % s.H == 0, "attention: C=" << s.C << " not divisible by H=" << s.H);
  SY_CHECK(s.window >= 0, "attention: window=" << s.window << "; 0 (causal) or a positive number of keys");
  SY_CHECK(s.heads >= 0 && s.heads <= s.H, "attention: heads=" << s.heads << "; 0 (all) up to H=" << s.H);
  check_shape(qkv, {s.B, s.T, 3 * s.C}, "attention qkv");
  SY_CHECK(qkv.dtype() == DType::f32 || qkv.dtype() == DType::bf16,
           "attention: qkv is " << dtype_name(qkv.dtype()) << "; f32 or bf16");
}
}  // namespace

void attention_forward(Ctx& ctx, const AttentionArgs& a) {
  const AttentionShape& s = a.shape;
  check_qkv(ctx, a.qkv, s);
  check_shape(a.out, {s.B, s.T, s.C}, "attention out");
  check_shape(a.lse, {s.B, s.H, s.T}, "attention lse");
  check_dtype(a.out, a.qkv.dtype(), "attention out");
  check_dtype(a.lse, DType::f32, "attention lse");
  check_device(ctx, "attention_forward", {&a.out, &a.lse, &a.qkv});
  SY_DISPATCH(ctx, attention_forward, ctx, a);
}

void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a) {
  const AttentionShape& s = a.shape;
  check_qkv(ctx, a.qkv, s);
  check_shape(a.dqkv, a.qkv.shape(), "attention dqkv");
  check_shape(a.dout, {s.B, s.T, s.C}, "attention dout");
  check_shape(a.out, {s.B, s.T, s.C}, "attention out");
  check_shape(a.lse, {s.B, s.H, s.T}, "attention lse");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&a.dqkv, &a.dout, &a.out}) check_dtype(*t, a.qkv.dtype(), "attention gradient or out");
  check_dtype(a.lse, DType::f32, "attention lse");
  check_device(ctx, "attention_backward", {&a.dqkv, &a.dout, &a.qkv, &a.out, &a.lse});
  SY_DISPATCH(ctx, attention_backward, ctx, a);
}

}  // namespace sy::ops
