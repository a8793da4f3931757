// Causal multi-head self-attention (Vaswani et al. 2017), dense.
//
//   q, k, v = split(qkv) into H heads of size D = C / H
//   s[t, u] = q_t . k_u / sqrt(D)           for u <= t (causal mask)
//   a[t, :] = softmax(s[t, :])              out_t = sum_u a[t, u] v_u
//
// Shapes: qkv (B, T, 3C) laid out [q | k | v] per token; out (B, T, C);
// saved for backward: att (B, H, T, T), the probabilities a.
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

void attention_forward(Tensor& out, Tensor& att, const Tensor& qkv, const AttentionShape& s);
void attention_backward(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& att,
                        const AttentionShape& s);

}  // namespace sy::ops
