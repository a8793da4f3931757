// The CUDA and cuBLAS members of the check-macro family (core/error.h).
// CUDA builds only.
#pragma once
#ifdef SY_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(expr) SY_CHECK_CALL("CUDA", expr, cudaSuccess, cudaGetErrorString)
#define CUBLAS_CHECK(expr) SY_CHECK_CALL("cuBLAS", expr, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)
#endif
