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

#pragma once
#include "core/tensor.h"

namespace sy::ops {

struct AttentionShape {
  int64_t B, T, C, H;
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

namespace cpu {
void attention_forward(Ctx& ctx, const AttentionArgs& a);
void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a);
}  // namespace cpu

}  // namespace sy::ops
