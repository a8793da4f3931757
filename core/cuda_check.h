// The CUDA and cuBLAS members of the check-macro family (core/error.h).
// CUDA builds only.
#pragma once
#ifdef SY_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(expr) SY_CHECK_CALL("CUDA", expr, cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(expr) SY_CHECK_CALL("cuBLAS", expr, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)

namespace sy {
// Whether the work recorded before event e is done, without waiting.
// cudaEventQuery answers cudaErrorNotReady for "not yet", an answer the
// runtime may also keep as the thread's last error, which the next launch's
// CUDA_CHECK(cudaGetLastError()) would then report as a failure: cleared here
// (as PyTorch's event query does). Any other answer is an error.
inline bool event_done(cudaEvent_t e) {
  const cudaError_t r = cudaEventQuery(e);
  if (r == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  CUDA_CHECK(r);
  return true;
}
}  // namespace sy
#endif
