// Rotary position embedding (Su et al. 2021, RoFormer), in place on the heads
// of each row, in Hugging Face's rotate_half convention (GPT-NeoX, Llama,
// Mixtral): a head of size D is split into halves, and element i of the first
// half pairs with element i + D/2 of the second half. (Not interleaved pairs
// (2i, 2i+1) as in the RoFormer paper and Meta's original Llama code; the
// Hugging Face export depends on this pairing.)
//
//   theta_i = base^(-2i/D),  a = p * theta_i               i in [0, D/2)
//   y[i]       = x[i] cos a - x[i + D/2] sin a
//   y[i + D/2] = x[i + D/2] cos a + x[i] sin a
//
// that is y = x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1]
// and cos, sin repeated over both halves (HF's apply_rotary_pos_emb).
//
// Shapes: x (N, W), rotated in place. Row n is at position p = positions[n]
// (i32 (N)), or, with positions undefined, p = n mod seq_len. Heads
// h in [0, heads) of size D occupy columns [h*D, (h+1)*D) and are rotated;
// columns from heads*D on are left alone, so a packed qkv (N, 3C) rotates q
// and k with heads = 2 * n_heads and leaves v. D even, heads*D <= W.
// Angles: p * theta_i in double, cos and sin in double, rounded to f32 (a
// kernel takes a cos/sin table built the same way: fp32 angles lose ~1e-3 rad
// at positions in the tens of thousands).
// Backward: the rotation is orthogonal, so dx = R(-a) dy, also in place:
// rope_backward turns a gradient w.r.t. the rotated values (x holds dy) into
// the gradient w.r.t. the values before rotation. Nothing is saved but the
// positions.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"

namespace sy::ops {

constexpr double kRopeDefaultBase = 10000.0;

struct RopeArgs {
  Tensor& x;                 // (N, W): values on entry, rotated values on return
  const Tensor& positions;   // i32 (N), or undefined: row n is at n mod seq_len
  int64_t seq_len;           // used when positions is undefined
  int64_t heads;             // heads rotated, from column 0
  int64_t head_dim;          // D, even
  double base = kRopeDefaultBase;
};

// Backward: x holds dy on entry and dx on return.
using RopeBackwardArgs = RopeArgs;

void rope_forward(Ctx& ctx, const RopeArgs& a);
void rope_backward(Ctx& ctx, const RopeBackwardArgs& a);

// The CPU reference (ops/cpu/rope.cc) and the CUDA kernels (ops/cuda/rope.cu; CUDA builds).
SY_DECLARE_BACKENDS(
  void rope_forward(Ctx& ctx, const RopeArgs& a);
  void rope_backward(Ctx& ctx, const RopeBackwardArgs& a);
)

}  // namespace sy::ops
