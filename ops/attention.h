// Causal multi-head self-attention (Vaswani et al. 2017), dense.
//
//   q, k, v = split(qkv) into H heads of size D = C / H
//   s[t, u] = q_t . k_u / sqrt(D)           for u <= t (causal mask)
//   a[t, :] = softmax(s[t, :])              out_t = sum_u a[t, u] v_u
//
// Shapes: qkv (B, T, 3C) laid out [q | k | v] per token; out (B, T, C);
// saved for backward: att (B, H, T, T), the probabilities a, zero for u > t
// (the CPU backward reads whole vectors of a row past t and relies on it).
// Backward: dv_u += sum_t a[t,u] dout_t; da[t,u] = dout_t . v_u;
//   ds[t,u] = a[t,u] (da[t,u] - sum_u' a[t,u'] da[t,u']);
//   dq_t += sum_u ds[t,u] k_u / sqrt(D); dk_u += sum_t ds[t,u] q_t / sqrt(D).
// dqkv accumulates.
#pragma once
#include "core/tensor.h"

namespace sy::ops {

struct AttentionShape {
  int64_t B, T, C, H;
};

struct AttentionArgs {
  Tensor& out;
  Tensor& att;
  const Tensor& qkv;
  AttentionShape shape;
};

struct AttentionBackwardArgs {
  Tensor& dqkv;
  const Tensor& dout;
  const Tensor& qkv;
  const Tensor& att;
  AttentionShape shape;
};

void attention_forward(Ctx& ctx, const AttentionArgs& a);
void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a);

namespace cpu {
void attention_forward(Ctx& ctx, const AttentionArgs& a);
void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a);
}  // namespace cpu

}  // namespace sy::ops
