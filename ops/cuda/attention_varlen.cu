// Attention over variable-length segments of member rows on CUDA
// (ops/cuda/attention_varlen.h): the entry points over the kernels of
// ops/cuda/attention_kernels.cuh, with attn::MemberMask.
#include <cmath>
#include <climits>
#include <cstdint>
#include <string>

#include "ops/cuda/attention_kernels.cuh"

namespace sy::ops::cuda {

namespace {

// scratch: (2 (segments + 1)) i32 on the launches' stream, for the work lists.
Geom varlen_geom(const VarlenAttention& v, Tensor& scratch) {
  Geom g;
  g.scratch = scratch.data<int32_t>();
  g.B = static_cast<int>(v.segments);
  g.H = g.heads = static_cast<int>(v.H);
  g.T = static_cast<int>(v.max_len);
  g.seg = v.seg;
  g.rows = v.rows;
  g.C = v.C;
  g.ld_qkv = 3 * v.C;
  g.ld_out = v.C;
  g.scale = 1.f / std::sqrt(static_cast<float>(v.C / v.H));
  return g;
}

void check_varlen(const char* op, const VarlenAttention& v, const Tensor& qkv) {
  SY_CHECK(v.H > 0 && v.C % v.H == 0, op << ": C=" << v.C << " not divisible by H=" << v.H);
  check_shape(qkv, {v.rows, 3 * v.C}, op);
  // (segments lie on no grid axis: the work list's blocks are on x)
  if (v.max_len > INT32_MAX / 2 || v.rows > INT32_MAX || v.segments > INT32_MAX / 2 || v.H > 65535)
    throw BackendError(std::string(op) + ": up to 65535 heads, 2^30 rows per segment, 2^31 in all");
}

attn::MemberMask member_mask(const VarlenAttention& v) {
  attn::MemberMask m{v.is_query, v.is_key, v.key_len};
  m.pos = v.pos;
  m.qbits = v.qbits;
  m.kbits = v.kbits;
  m.words = v.words;
  m.clusters = v.clusters;
  m.all_flagged = v.all_flagged;
  return m;
}
}  // namespace

void varlen_attention_forward(Ctx& ctx, const VarlenAttention& v, const Tensor& qkv, Tensor& out, Tensor& lse) {
  check_varlen("varlen_attention_forward", v, qkv);
  check_shape(out, {v.rows, v.C}, "varlen_attention_forward out");
  check_shape(lse, {v.H, v.rows}, "varlen_attention_forward lse");
  if (v.rows == 0 || v.segments == 0 || v.max_len == 0) return;
  SY_CHECK(!v.pos || (v.key_len && (v.words == 0 || (v.qbits && v.kbits && v.clusters > 0))),
           "varlen_attention_forward: positions (the split layout) need key prefixes and membership bitmaps");
  check_aligned("varlen_attention_forward", {qkv.raw(), out.raw()});
  Tensor scratch = Tensor::empty({2 * (v.segments + 1)}, DType::i32, ctx);
  forward_any("varlen_attention_forward", varlen_geom(v, scratch), member_mask(v), qkv, out, lse.data<float>(),
              v.C / v.H, stream_of(ctx));
}

void varlen_attention_backward(Ctx& ctx, const VarlenAttention& v, Tensor& dqkv, const Tensor& dout,
                               const Tensor& qkv, const Tensor& out, const Tensor& lse) {
  check_varlen("varlen_attention_backward", v, qkv);
  check_shape(dqkv, {v.rows, 3 * v.C}, "varlen_attention_backward dqkv");
  check_shape(dout, {v.rows, v.C}, "varlen_attention_backward dout");
  check_shape(out, {v.rows, v.C}, "varlen_attention_backward out");
  check_shape(lse, {v.H, v.rows}, "varlen_attention_backward lse");
  if (v.rows == 0 || v.segments == 0 || v.max_len == 0) return;
  SY_CHECK(!v.pos || (v.key_len && (v.words == 0 || (v.qbits && v.kbits && v.clusters > 0))),
           "varlen_attention_backward: positions (the split layout) need key prefixes and membership bitmaps");
  check_aligned("varlen_attention_backward", {qkv.raw(), dqkv.raw(), dout.raw(), out.raw()});
  Tensor scratch = Tensor::empty({2 * (v.segments + 1)}, DType::i32, ctx);
  backward_any("varlen_attention_backward", ctx, varlen_geom(v, scratch), member_mask(v), v.rows, dqkv, dout, qkv,
               out, lse.data<float>(), v.C / v.H);
}

}  // namespace sy::ops::cuda
