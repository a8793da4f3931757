// CUDA_CHECK: the CUDA member of the check-macro family (see error.h). Reports
// file, line, the expression and CUDA's own error string; throws BackendError.
#pragma once
#ifdef SY_WITH_CUDA
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(expr)                                                         \
  do {                                                                           \
    cudaError_t sy_cuda_err_ = (expr);                                           \
    if (sy_cuda_err_ != cudaSuccess) {                                           \
      std::ostringstream sy_cuda_os_;                                            \
      sy_cuda_os_ << __FILE__ << ":" << __LINE__ << ": " << #expr << ": "        \
                  << cudaGetErrorString(sy_cuda_err_);                           \
      throw ::sy::BackendError(sy_cuda_os_.str());                               \
    }                                                                            \
  } while (0)
#endif
