// Causal multi-head self-attention (Vaswani et al. 2017), dense.
//
//   q, k, v = split(qkv) into H heads of size D = C / H
//   s[t, u] = q_t . k_u / sqrt(D)           for u <= t (causal mask)
//   lse_t = log sum_{u<=t} exp(s[t, u])     a[t, u] = exp(s[t, u] - lse_t)
//   out_t = sum_u a[t, u] v_u
//
// Shapes: qkv (B, T, 3C) laid out [q | k | v] per token; out (B, T, C);
// saved for backward: lse (B, H, T), fp32, natural log. Nothing of size T^2 is
// kept: backward recomputes a[t, u] = exp(s[t, u] - lse_t) from q, k and lse
// (FlashAttention's form, Dao et al. 2022):
//   Delta_t = dout_t . out_t  (= sum_u a[t,u] da[t,u])
//   dv_u += sum_t a[t,u] dout_t;  da[t,u] = dout_t . v_u;  ds[t,u] = a[t,u] (da[t,u] - Delta_t)
//   dq_t += sum_u ds[t,u] k_u / sqrt(D);  dk_u += sum_t ds[t,u] q_t / sqrt(D).
// dqkv accumulates.
//
// Sliding window (shape.window = w > 0; Beltagy et al. 2020, Mistral's SWA):
// the mask above becomes t - w < u <= t, so each query sees its last w keys
// (itself included) - the local heads of routed attention, the same key sets
// as ops::local_keysets(T, w) over ops::sparse_attention, here as tiles. The
// kernels visit only the key tiles a query tile's window reaches: ~T w pairs
// instead of T^2 / 2. w = 0 (or w >= T) is the plain causal mask.
// Head subset (shape.heads = Hc > 0): only heads [0, Hc) are computed; the
// other heads' columns of out and dqkv and their lse rows are left as they
// were (a layer whose other heads attend some other way writes them).
//
// Layout: the packed (B, T, 3C) qkv the qkv projection writes, read with
// strides (a head's row is D contiguous elements, the rows 3C apart). A
// (B, H, T, D) layout would make rows contiguous, but every row is already a
// whole number of 16-byte vectors (D = 64 or 128 on the GPU), so tiles load
// just as well with strides, and the layout saves a split/merge pass over
// qkv and dqkv in every layer.
//
// Dtypes: qkv, out, dout and dqkv share one dtype, f32 or bf16 (on CUDA
// tensor cores, fp32 accumulation and softmax; on the CPU the f32 reference
// on the bf16 values, results rounded to bf16: the emulation the bf16 GPU
// path is tested against); lse is always f32. CUDA: head dims 16, 32, 64 and 128 in f32 (a plain fp32
// path, tolerance class F against the CPU), 64 and 128 in bf16 (tensor cores,
// class B); any B, T, H. Kernels: ops/cuda/attention_kernels.cuh. CPU: BLAS GEMMs per
// block of query rows (S, P V; in backward S again, dP, dV, dQ, dK), the
// softmax and its backward in vectors: ops/cpu/attention.cc.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

struct AttentionShape {
  int64_t B, T, C, H;
  int64_t window = 0;  // w > 0: keys t - w < u <= t only; 0: every u <= t
  int64_t heads = 0;   // Hc > 0: heads [0, Hc) only; 0: all H
  int64_t active_heads() const { return heads > 0 ? heads : H; }
};

struct AttentionArgs {
  Tensor& out;        // (B, T, C)
  Tensor& lse;        // (B, H, T) f32
  const Tensor& qkv;  // (B, T, 3C)
  AttentionShape shape;
};

struct AttentionBackwardArgs {
  Tensor& dqkv;        // (B, T, 3C), accumulates
  const Tensor& dout;  // (B, T, C)
  const Tensor& qkv;   // (B, T, 3C)
  const Tensor& out;   // (B, T, C), the forward's
  const Tensor& lse;   // (B, H, T), the forward's
  AttentionShape shape;
};

void attention_forward(Ctx& ctx, const AttentionArgs& a);
void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a);

// The CPU reference (ops/cpu/attention.cc) and the CUDA kernels (ops/cuda/attention_kernels.cuh;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void attention_forward(Ctx& ctx, const AttentionArgs& a);
  void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a);
)

}  // namespace sy::ops
