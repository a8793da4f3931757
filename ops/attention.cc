#include "ops/attention.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check_qkv(const Tensor& qkv, const AttentionShape& s) {
  SY_CHECK(s.H > 0 && s.C % s.H == 0, "attention: C=" << s.C << " not divisible by H=" << s.H);
  check_shape(qkv, {s.B, s.T, 3 * s.C}, "attention qkv");
}
}  // namespace

void attention_forward(Ctx& ctx, const AttentionArgs& a) {
  const AttentionShape& s = a.shape;
  check_qkv(a.qkv, s);
  check_shape(a.out, {s.B, s.T, s.C}, "attention out");
  check_shape(a.att, {s.B, s.H, s.T, s.T}, "attention att");
  check_device(ctx, "attention_forward", {&a.out, &a.att, &a.qkv});
  SY_DISPATCH_CPU_ONLY(ctx, attention_forward, ctx, a);
}

void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a) {
  const AttentionShape& s = a.shape;
  check_qkv(a.qkv, s);
  check_shape(a.dqkv, a.qkv.shape(), "attention dqkv");
  check_shape(a.dout, {s.B, s.T, s.C}, "attention dout");
  check_shape(a.att, {s.B, s.H, s.T, s.T}, "attention att");
  check_device(ctx, "attention_backward", {&a.dqkv, &a.dout, &a.qkv, &a.att});
  SY_DISPATCH_CPU_ONLY(ctx, attention_backward, ctx, a);
}

}  // namespace sy::ops
