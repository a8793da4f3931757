// The bf16 mode's GEMM operands on the CPU (ops/matmul.h), as the fp32
// values they stand for: bf16(t) for an fp32 activation, the exact widening
// of a bf16 shadow. The CPU then runs its fp32 GEMM on these: a product of two
// bf16 values is exact in fp32, so only the order of the fp32 sums differs
// from a bf16 GEMM with fp32 accumulation on the GPU.
#pragma once
#include "core/tensor.h"

namespace sy::ops::cpu {

inline Tensor bf16_operand(Ctx& ctx, const Tensor& t) {
  Tensor r = Tensor::empty(t.shape(), DType::f32, ctx);
  float* out = r.f32();
  if (t.dtype() == DType::bf16) {
    const bf16_t* in = t.data<bf16_t>();
    for (int64_t i = 0; i < t.numel(); ++i) out[i] = bf16_to_f32(in[i].bits);
  } else {
    const float* in = t.f32();
    for (int64_t i = 0; i < t.numel(); ++i) out[i] = bf16_to_f32(f32_to_bf16(in[i]));
  }
  return r;
}

// A bf16 tensor widened to fp32 (exact); an fp32 one as it is: the values a
// bf16 producer wrote, for the CPU's fp32 arithmetic.
inline Tensor widened(const Tensor& t) { return t.dtype() == DType::bf16 ? t.to(DType::f32) : t; }

}  // namespace sy::ops::cpu
