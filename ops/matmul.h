// Dense affine map: OpenBLAS sgemm on the CPU, cuBLASLt on CUDA.
//
//   y = x W + b  [+ y when accumulate]     x (N, K), W (K, M), b (M) or undefined, y (N, M)
//   w_transposed: y = x W^T + b with W (M, K) (a tied LM head: x wte^T)
//
// Backward: dx += dy W^T; dW += x^T dy; db += sum_n dy (w_transposed:
// dx += dy W; dW += dy^T x). Gradients accumulate; a null gradient pointer
// means that gradient is not wanted. dx_accumulate false writes dx = dy W^T
// instead (what it held is not read: a fresh dx needs no zero fill, and the
// GEMM no pass reading it back).
// Saved for backward: x (the caller keeps it).
//
// bf16 mode (w_bf16 given: the weight's bf16 shadow, bf16(W) as the optimizer
// wrote it, W's shape): the GEMM operands are bf16, products are accumulated
// and written in fp32, the bias is added in fp32:
//   y = bf16(x) W16 + b;  dx += bf16(dy) W16^T;  dW += bf16(x)^T bf16(dy);  db += sum_n dy
// with bf16() round to nearest even (core/dtype.h). A product of two bf16
// numbers is exact in fp32, so the CPU (which widens the rounded operands and
// calls sgemm) and cuBLASLt (bf16 inputs, CUBLAS_COMPUTE_32F) differ only in
// the order of the fp32 sums: tolerance class B. The forward can hand back
// bf16(x) (x_bf16), and backward takes x as that bf16 tensor: its dW then
// reads the forward's rounding instead of rounding x again (the same values,
// one pass over x fewer, and 2 bytes a value kept instead of 4). In bf16
// mode x may also come as bf16, rounded by its producer (layernorm, gelu):
// the GEMM reads it as it is, and x_bf16 is x. Likewise a bf16 dy in
// backward holds values that are bf16 already (a bf16 kernel's gradient):
// the GEMMs read it as it is, and db sums its values widened.
// A bf16 output (bf16 mode, written, not accumulated: y with accumulate false,
// dx with dx_accumulate false) holds bf16 of the fp32 result, its bias
// rounded to bf16 first and added in fp32 before the one rounding:
//   y = bf16(bf16(x) W16 + bf16(b)),  dx = bf16(bf16(dy) W16^T).
// (The bias is a weight read by a bf16 GEMM like W, and it is what PyTorch
// autocast's linear adds; cuBLASLt 13 takes no fp32 bias for a bf16 output,
// so an fp32 bias there cost an fp32 copy of the output and a rounding pass:
// docs/experiments/bf16-bias-copy.md. An fp32 output keeps the fp32 bias.)
// On CUDA the GEMM writes it (no fp32 copy and no rounding pass; its fp32
// sums perhaps in another order than the fp32 output's GEMM, so within one
// bf16 step of that output rounded; where cuBLASLt has no such algorithm, an
// fp32 scratch and the rounding pass); on the CPU the fp32 result is
// rounded, bit for bit what to_bf16 gives.
//
// The GELU epilogue (an FFN's first GEMM and the input gradient of its
// second; ops/gelu.h's tanh form), as cuBLASLt's GELU_AUX_BIAS and DGELU
// epilogues compute it, from the one fp32 value z of the GEMM (its bias
// added) before anything is rounded:
//   forward (gelu given, y written):  y = z, gelu = gelu(z)
//     bf16 y: y = bf16(z), gelu = bf16(gelu(z)) (not gelu of the rounded y);
//   backward (gelu_pre given, dx written), with p = gelu_pre and
//   g = dy W^T (bf16 mode: bf16(dy) W16^T) in fp32:
//     dx = g * gelu'(p); bf16 dx: bf16(g * gelu'(p)), g not rounded first.
// gelu is y's shape and dtype, gelu_pre dx's. In fp32 they are exactly
// the separate ops (matmul then gelu_forward; matmul's dx then
// gelu_backward). In bf16 each drops a rounding the separate ops make
// (of z before GELU reads it; of g before it is scaled), as the fused
// epilogue computes them: on CUDA one GEMM writes both outputs (no
// activation pass over the FFN's widest tensors), or where cuBLASLt has
// no such algorithm, fp32 scratch and the GELU kernels on it. (cuBLASLt
// computes its GELU and derivative by its own arithmetic, undocumented:
// were it even the erf form, it would be within 5e-4 of the tanh form,
// under a bf16 step of the values that matter, so class B either way;
// the bf16 op cases compare it with the CPU's tanh form.)
#pragma once
#include "core/tensor.h"

namespace sy::ops {

struct MatmulArgs {
  Tensor& y;  // f32, or bf16 in bf16 mode when not accumulated
  const Tensor& x;
  const Tensor& w;
  const Tensor& b;  // undefined: no bias
  bool accumulate = false;
  bool w_transposed = false;
  const Tensor* w_bf16 = nullptr;  // bf16 mode: W's bf16 shadow
  Tensor* x_bf16 = nullptr;        // bf16 mode, out (optional): bf16(x), (N, K) bf16
  Tensor* gelu = nullptr;          // out (optional): gelu(z) (the GELU epilogue above; not with accumulate)
};

struct MatmulBackwardArgs {
  Tensor* dx;  // f32, or bf16 in bf16 mode when written (dx_accumulate false)
  Tensor* dw;
  Tensor* db;
  const Tensor& dy;
  const Tensor& x;  // f32; in bf16 mode also bf16 (the forward's x_bf16)
  const Tensor& w;
  bool w_transposed = false;
  const Tensor* w_bf16 = nullptr;  // bf16 mode: W's bf16 shadow
  bool dx_accumulate = true;       // false: dx is written, not added to
  // The GELU epilogue's backward (above): dx = gelu'(gelu_pre) * dy W^T,
  // written (dx_accumulate false); gelu_pre is the forward's y.
  const Tensor* gelu_pre = nullptr;
};

void matmul_forward(Ctx& ctx, const MatmulArgs& a);
void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a);

namespace cpu {
void matmul_forward(Ctx& ctx, const MatmulArgs& a);
void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a);
}  // namespace cpu

// The CUDA kernels (ops/cuda/matmul.cu; CUDA builds).
namespace cuda {
void matmul_forward(Ctx& ctx, const MatmulArgs& a);
void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a);
}  // namespace cuda

}  // namespace sy::ops
