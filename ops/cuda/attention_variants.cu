// The attention variants of ops/cuda/attention_variants.h: the kernels of
// ops/cuda/attention_kernels.cuh instantiated with other TcCfg tiles (the
// defaults run through the entry points of ops/cuda/attention.cu, so this
// file compiles only the variants' own kernels).
#include "ops/cuda/attention_variants.h"

#include <string>

#include "ops/cuda/attention_kernels.cuh"

namespace sy::ops::cuda {

namespace {

// The tables, by index of variant (0: the default, run through the entry
// points); ptxas -v on this file gives each kernel's registers and spills.
//   D 64, default: forward 4 warps x 32 rows, key tiles of 64; dK/dV and dQ 4 warps x 16 rows, tiles of 64.
//   D 128, default: forward 8 warps x 16 rows, key tiles of 64, Q in registers; dK/dV 4 x 16 keys,
//   query tiles of 32; dQ 4 x 16 queries, key tiles of 64.
// The 4 x 32 variants give each warp two row tiles (MT 2), so every
// fragment of the shared operand an mma.sync reads serves two: half the
// shared-memory reads a multiply of the 16-row warps (at 16 rows a warp an
// m16n8k16 reads 256 bytes of its B operand from shared memory, two cycles
// of an SM's 128 bytes a cycle, more than the multiply's own issue time).
// FlashAttention-2 gives its warps 32 or more rows for this reason. Their
// tiles are the largest that ptxas (CUDA 13.0, sm_90) fits in 255
// registers: 254, 213 and 232 with no spill (the forward at D 128, dQ at D 64,
// dK/dV at D 64 with query tiles of 16), 8 bytes spilled by dK/dV at D 64
// with query tiles of 32, none by dQ at D 128 with key tiles of 16 (238);
// key tiles of 64 spilled 108 bytes (forward, D 128), and dK/dV at D 128
// spilled 584 (not offered).
const std::vector<AttentionVariant>& table(int64_t D) {
  static const std::vector<AttentionVariant> d64 = {
      {"default", "forward 4 warps x 32 query rows, key tiles of 64; dK/dV, dQ 4 warps x 16 rows, tiles of 64", false},
      {"fwd_qreg", "forward as the default, the warps' Q fragments in registers", true},
      {"fwd_8x16", "forward 8 warps x 16 query rows (128), key tiles of 64", true},
      {"fwd_bn128", "forward 4 warps x 32 query rows, key tiles of 128", true},
      {"bwd_8warps", "dK/dV 8 warps x 16 keys (128), query tiles of 64; dQ 8 warps x 16 queries, key tiles of 64",
       false},
      {"bwd_bn128", "dK/dV 4 warps x 16 keys, query tiles of 128; dQ 4 warps x 16 queries, key tiles of 128", false},
      {"bwd_4x32", "dK/dV 4 warps x 32 keys (128), query tiles of 32; dQ 4 warps x 32 queries (128), key tiles of 32",
       false},
      {"bwd_4x32_kv16",
       "dK/dV 4 warps x 32 keys (128), query tiles of 16; dQ 4 warps x 32 queries (128), key tiles of 32", false}};
  static const std::vector<AttentionVariant> d128 = {
      {"default",
       "forward 8 warps x 16 query rows, key tiles of 64, Q in registers; dK/dV 4 warps x 16 keys, query tiles "
       "of 32; dQ 4 warps x 16 queries, key tiles of 64",
       false},
      {"fwd_noqreg", "forward as the default, Q read from shared memory every key tile", true},
      {"fwd_4x16", "forward 4 warps x 16 query rows (64), key tiles of 64, Q in registers", true},
      {"fwd_bn32", "forward 8 warps x 16 query rows, key tiles of 32, Q in registers", true},
      {"bwd_8warps", "dK/dV 8 warps x 16 keys (128), query tiles of 32; dQ 8 warps x 16 queries, key tiles of 64",
       false},
      {"bwd_dq_bn32", "dK/dV as the default; dQ 4 warps x 16 queries, key tiles of 32", false},
      {"fwd_4x32_bn32", "forward 4 warps x 32 query rows (128), key tiles of 32, Q from shared memory", true},
      {"bwd_dq_4x32_bn16", "dK/dV as the default; dQ 4 warps x 32 queries (128), key tiles of 16", false}};
  static const std::vector<AttentionVariant> none;
  return D == 64 ? d64 : D == 128 ? d128 : none;
}

const bf16* bf(const Tensor& t) { return reinterpret_cast<const bf16*>(t.data<bf16_t>()); }
bf16* bf(Tensor& t) { return reinterpret_cast<bf16*>(t.data<bf16_t>()); }

// What every variant needs; returns the head dim.
// (Below the op layer: the shapes are the caller's, as the entry points'
// front end would have checked them; here only what picks a kernel.)
int64_t check(const char* op, const AttentionShape& s, DType dt, size_t v) {
  if (s.H <= 0 || s.C % s.H != 0)
    throw BackendError(std::string(op) + ": C=" + std::to_string(s.C) + " is no multiple of H=" + std::to_string(s.H));
  const int64_t D = s.C / s.H;
  if (dt != DType::bf16 || (s.window > 0 && s.window < s.T) || v >= table(D).size())
    throw BackendError(std::string(op) + ": variant " + std::to_string(v) + " at head dim " + std::to_string(D) +
                       " in " + dtype_name(dt) + (s.window > 0 && s.window < s.T ? " with a window" : "") +
                       " (variants: bf16, causal, head dims 64 and 128)");
  check_size(op, s);
  return D;
}

template <class Cfg>
void forward_with(Ctx& ctx, const AttentionArgs& a) {
  check_aligned("attention_forward_variant", {a.qkv.raw(), a.out.raw()});
  forward_bf16_cfg<Cfg>(geom(a.shape), CausalMask{}, bf(a.qkv), bf(a.out), a.lse.data<float>(), stream_of(ctx));
}

template <class Kv, class Q>
void backward_with(Ctx& ctx, const AttentionBackwardArgs& a) {
  const AttentionShape& s = a.shape;
  check_aligned("attention_backward_variant", {a.qkv.raw(), a.dqkv.raw(), a.dout.raw(), a.out.raw()});
  const Geom g = geom(s);
  const int64_t rows = s.B * s.T, D = s.C / s.H;
  Tensor delta = Tensor::empty({rows * g.H}, DType::f32, ctx);  // laid out as lse
  cudaStream_t st = stream_of(ctx);
  delta_any<bf16>(bf(a.dout), bf(a.out), delta.data<float>(), g, D, rows, st);
  backward_bf16_cfg<Kv, Q>(g, CausalMask{}, bf(a.qkv), bf(a.dout), a.lse.data<float>(), delta.data<float>(),
                           bf(a.dqkv), st);
}

}  // namespace

std::vector<AttentionVariant> attention_variants(int64_t D) { return table(D); }

void attention_forward_variant(Ctx& ctx, const AttentionArgs& a, size_t v) {
  const int64_t D = check("attention_forward_variant", a.shape, a.qkv.dtype(), v);
  if (a.shape.B == 0 || a.shape.T == 0) return;
  if (!table(D)[v].forward) return cuda::attention_forward(ctx, a);  // (the default's)
  if (D == 64) {
    switch (v) {
      case 1: return forward_with<TcCfg<64, 4, 2, 64, true>>(ctx, a);
      case 2: return forward_with<TcCfg<64, 8, 1, 64>>(ctx, a);
      default: return forward_with<TcCfg<64, 4, 2, 128>>(ctx, a);
    }
  }
  switch (v) {
    case 1: return forward_with<TcCfg<128, 8, 1, 64>>(ctx, a);
    case 2: return forward_with<TcCfg<128, 4, 1, 64, true>>(ctx, a);
    case 3: return forward_with<TcCfg<128, 8, 1, 32, true>>(ctx, a);
    default: return forward_with<TcCfg<128, 4, 2, 32>>(ctx, a);
  }
}

void attention_backward_variant(Ctx& ctx, const AttentionBackwardArgs& a, size_t v) {
  const int64_t D = check("attention_backward_variant", a.shape, a.qkv.dtype(), v);
  if (a.shape.B == 0 || a.shape.T == 0) return;
  if (v == 0 || table(D)[v].forward) return cuda::attention_backward(ctx, a);  // (the default's)
  if (D == 64) {
    switch (v) {
      case 4: return backward_with<TcCfg<64, 8, 1, 64>, TcCfg<64, 8, 1, 64>>(ctx, a);
      case 5: return backward_with<TcCfg<64, 4, 1, 128>, TcCfg<64, 4, 1, 128>>(ctx, a);
      case 6: return backward_with<TcCfg<64, 4, 2, 32>, TcCfg<64, 4, 2, 32>>(ctx, a);
      default: return backward_with<TcCfg<64, 4, 2, 16>, TcCfg<64, 4, 2, 32>>(ctx, a);
    }
  }
  switch (v) {
    case 4: return backward_with<TcCfg<128, 8, 1, 32>, TcCfg<128, 8, 1, 64>>(ctx, a);
    case 5: return backward_with<TcCfg<128, 4, 1, 32>, TcCfg<128, 4, 1, 32>>(ctx, a);
    default: return backward_with<TcCfg<128, 4, 1, 32>, TcCfg<128, 4, 2, 16>>(ctx, a);
  }
}

}  // namespace sy::ops::cuda
