// Ctx: what every op receives. The device it runs on, the stream its work is
// ordered on, the allocator its outputs and scratch come from, and the BLAS
// handles (cuBLAS/cuBLASLt with their workspace on CUDA; OpenBLAS on the CPU
// needs none). A Ctx does not own these: the host one is a process-wide
// singleton, a device one is owned by a DeviceRuntime (core/cuda_runtime.h,
// CUDA builds only).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/allocator.h"
#include "core/device.h"

namespace sy {

struct BlasHandle {
  void* cublas = nullptr;     // cublasHandle_t
  void* cublaslt = nullptr;   // cublasLtHandle_t
  void* workspace = nullptr;  // device bytes for cuBLASLt, one per stream
  size_t workspace_bytes = 0;
};

class OpProfiler;  // core/op_profile.h

struct Ctx {
  Device device;
  Stream stream;
  Allocator* alloc = nullptr;
  BlasHandle blas;
  OpProfiler* profiler = nullptr;  // set: every op entry point records its interval (train_switch --op-profile)
};

// The CPU context: host allocator, no stream, no handles. A copy from a
// device through it waits for the whole device first (core/tensor.cc).
Ctx& host_ctx();

// The CPU context with `ordered`'s stream: a copy from a device through it
// waits for the work queued on that stream only, where the tensor's writers
// all are. Inside a training step this keeps the host from waiting for the
// gradient reducer's side stream too (its collectives run behind backward,
// and a replayed forward, train.recompute, copies to the host among them).
Ctx host_ctx_on(const Ctx& ordered);

// Times the host has waited for a device to copy data: Tensor copies to or
// from the host (which wait for the stream) and ops/cuda's downloads. A
// process-wide count, so a test can check that a GPU step queues its work
// without ever waiting (runtime/router.h, ops/routing.h's padded routes).
// Not counted: ops/cuda's upload() of small host vectors (cudaMemcpyAsync
// from pageable memory, which the driver stages and may order after earlier
// work, without the host waiting for it to finish). count_host_wait() is
// called where a copy synchronises (core/tensor.cc, ops/cuda/common.cuh).
int64_t host_waits();
void count_host_wait();

}  // namespace sy
