// How an op's entry point (ops/<op>.cc) picks its backend: it checks shapes
// once, checks that every tensor is on the context's device, then calls
// cpu::<op> or cuda::<op> with the same arguments. An op whose CUDA kernels
// are not written yet (or a build without CUDA) throws BackendError naming
// the op, so a device tensor never reaches host code.
#pragma once
#include <initializer_list>
#include <string>

#include "core/op_profile.h"
#include "core/tensor.h"

namespace sy::ops {

// Throws ShapeError naming the op and the first tensor not on ctx's device
// (undefined tensors are skipped: optional inputs).
void check_device(const Ctx& ctx, const char* op, std::initializer_list<const Tensor*> tensors);

[[noreturn]] void no_cuda_kernel(const char* op);

}  // namespace sy::ops

// Declares an op's backend entry points once, in the two namespaces that
// SY_DISPATCH calls: cpu:: (the reference) and cuda:: (the kernels; defined
// in CUDA builds only, never called in others). The arguments are the plain
// declarations, each ending in ';', so the two lists cannot drift apart.
#define SY_DECLARE_BACKENDS(...) \
  namespace cpu {                \
  __VA_ARGS__                    \
  }                              \
  namespace cuda {               \
  __VA_ARGS__                    \
  }

// Calls the CPU reference of `op`; on a CUDA context, the CUDA kernels when
// the build has them. With a profiler on the context, the call is one of its
// intervals (core/op_profile.h).
#ifdef SY_WITH_CUDA
#define SY_DISPATCH(ctx, op, ...)                                   \
  do {                                                              \
    const ::sy::OpScope sy_op_scope((ctx).profiler, #op);           \
    if ((ctx).device.is_cpu()) return ::sy::ops::cpu::op(__VA_ARGS__); \
    return ::sy::ops::cuda::op(__VA_ARGS__);                        \
  } while (0)
#else
#define SY_DISPATCH(ctx, op, ...)                                   \
  do {                                                              \
    const ::sy::OpScope sy_op_scope((ctx).profiler, #op);           \
    if ((ctx).device.is_cpu()) return ::sy::ops::cpu::op(__VA_ARGS__); \
    ::sy::ops::no_cuda_kernel(#op);                                 \
  } while (0)
#endif

// The same for ops with no CUDA kernels yet.
#define SY_DISPATCH_CPU_ONLY(ctx, op, ...)                          \
  do {                                                              \
    const ::sy::OpScope sy_op_scope((ctx).profiler, #op);           \
    if ((ctx).device.is_cpu()) return ::sy::ops::cpu::op(__VA_ARGS__); \
    ::sy::ops::no_cuda_kernel(#op);                                 \
  } while (0)
