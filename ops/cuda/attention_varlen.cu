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

// The work lists' room (attn::TileItem, 16 bytes each): the grid's bound at
// the smallest tile any kernel takes (16 rows), for each of two lists.
int64_t items_cap(const VarlenAttention& v) { return (v.rows + 15) / 16 + v.segments; }
Tensor work_scratch(Ctx& ctx, const VarlenAttention& v) {
  return Tensor::empty({2 * items_cap(v) * 4}, DType::i32, ctx);
}

// scratch: work_scratch's, on the launches' stream.
Geom varlen_geom(const VarlenAttention& v, Tensor& scratch) {
  Geom g;
  g.scratch = reinterpret_cast<attn::TileItem*>(scratch.data<int32_t>());
  g.items_cap = items_cap(v);
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

// ends[r] = row_end of packed row r in its segment (attn::MemberMask::ends,
// row_end_at): one thread a row.
__global__ void row_ends_kernel(attn::MemberMask m, const int32_t* __restrict__ seg, int S, int64_t rows,
                                int32_t* __restrict__ ends) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r < rows) ends[r] = m.row_end_at(seg, S, static_cast<int>(r));
}

// The launch's mask; with positions, its rows' span ends made on ctx's
// stream into `ends` (kept by the caller for the launch): the kernels read
// them wherever pos is set (attn::MemberMask::ends).
attn::MemberMask member_mask(Ctx& ctx, const VarlenAttention& v, Tensor& ends) {
  attn::MemberMask m{v.is_query, v.is_key, v.key_len};
  m.pos = v.pos;
  m.qbits = v.qbits;
  m.kbits = v.kbits;
  m.words = v.words;
  m.clusters = v.clusters;
  m.all_flagged = v.all_flagged;
  if (v.pos) {
    ends = Tensor::empty({v.rows}, DType::i32, ctx);
    row_ends_kernel<<<static_cast<unsigned>((v.rows + 255) / 256), 256, 0, stream_of(ctx)>>>(
        m, v.seg, static_cast<int>(v.segments), v.rows, ends.data<int32_t>());
    CUDA_CHECK(cudaGetLastError());
    m.ends = ends.data<int32_t>();
  }
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
  Tensor scratch = work_scratch(ctx, v), ends;
  forward_any("varlen_attention_forward", varlen_geom(v, scratch), member_mask(ctx, v, ends), qkv, out,
              lse.data<float>(), v.C / v.H, stream_of(ctx));
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
  Tensor scratch = work_scratch(ctx, v), ends;
  backward_any("varlen_attention_backward", ctx, varlen_geom(v, scratch), member_mask(ctx, v, ends), v.rows, dqkv,
               dout, qkv, out, lse.data<float>(), v.C / v.H);
}

}  // namespace sy::ops::cuda
