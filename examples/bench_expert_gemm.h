// The expert GEMMs of a MoE layer, seven ways, on one route (bench_ops's rows
// expert_gemm_*; docs/experiments/expert-gemm-routes.md asks which to take):
//
//   Y_g (n_g, N) = X_g (n_g, K) W_g (K, N)   for g = 0 .. E-1, bf16 in and out,
//                                            fp32 accumulation (CUBLAS_COMPUTE_32F)
//
// with n_g the rows a softmax top-2 route of T tokens over E experts gives
// expert g, clamped to the capacity 1.25 T k / E, packed back to back (X_g
// at row sum_{h<g} n_h), or padded (at row g * capacity). Issue 17 asks for
// cublasGemmGroupedBatchedEx in forward and input gradients; the product
// (ops/cuda/expert_ffn.cu) takes a cuBLASLt GEMM per expert instead (the
// grouped API needs one type for A, B and C, and our gradients are fp32).
// Which is faster is the GPU's to say; here, on the same operands:
//   lt_loop       the product's path: ops::cuda::gemm per expert (cuBLASLt, plans per row bucket)
//   loop          cublasGemmEx per expert, one stream
//   loop_streams  the same over 4 streams (expert g on stream g mod 4): SMs an
//                 expert's few tiles leave idle taken by the next experts'
//   grouped       one cublasGemmGroupedBatchedEx (a group of one per expert)
//   strided       the padded route: one cublasGemmStridedBatchedEx at capacity
//                 rows per expert (padding rows multiplied too)
//   strided_tight the same at the largest expert's rows (rounded up to 16),
//                 as a route that knows its counts could pad
//   one_gemm      all routed rows times W_0 in one GEMM: the same FLOPs ungrouped
// Each for the layer's two shapes: up (K = d, N = hidden) and down (K =
// hidden, N = d). CUDA only.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"

namespace sy::bench {

struct ExpertGemmVariant {
  std::string name, shape, note;
  double flops = 0;  // the routed rows' (2 sum n_g K N), whatever the variant multiplies
  std::function<void()> run;
  std::function<int64_t()> check;  // output elements of experts 0 and E-1 off the CPU, bf16 class
};

struct ExpertGemmShape {
  int64_t tokens = 16384, top_k = 2, experts = 64, d = 1024, hidden = 4096;
  double capacity_factor = 1.25;
};

// The variants on operands drawn on ctx's device (kept by the returned
// object until it is destroyed); `seed` draws the route and the operands.
class ExpertGemmBench {
 public:
  ExpertGemmBench(Ctx& ctx, const ExpertGemmShape& s, uint64_t seed);
  ~ExpertGemmBench();
  std::vector<ExpertGemmVariant> variants();

 private:
  struct State;
  std::unique_ptr<State> st_;
};

}  // namespace sy::bench
