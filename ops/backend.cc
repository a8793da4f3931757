#include "ops/backend.h"

namespace sy::ops {

void check_device(const Ctx& ctx, const char* op, std::initializer_list<const Tensor*> tensors) {
  int i = 0;
  for (const Tensor* t : tensors) {
    if (t && t->defined() && t->device() != ctx.device)
      throw ShapeError(std::string(op) + ": argument " + std::to_string(i) + " is on " + t->device().str() +
                       ", the context on " + ctx.device.str());
    ++i;
  }
}

void no_cuda_kernel(const char* op) {
#ifdef SY_WITH_CUDA
  throw BackendError(std::string(op) + ": no CUDA kernel yet; run this op on the CPU backend");
#else
  throw BackendError(std::string(op) +
                     ": this build of Switchyard has no CUDA backend (configure with SWITCHYARD_CUDA=ON)");
#endif
}

}  // namespace sy::ops
