// DeviceRuntime: what one CUDA device needs to run ops, owned in one place
// (RAII): a stream, the stream-ordered caching allocator, cuBLAS and cuBLASLt
// handles with their workspace on that stream, and the Ctx that hands them to
// ops. The allocator takes memory from the device's CUDA memory pool with
// cudaMallocAsync / cudaFreeAsync on the stream and a release threshold of
// "never", so after the first steps no allocation reaches the driver (no
// cudaMalloc in the step loop); Allocator::high_water() is the peak of live
// tensor bytes, which metrics report.
//
// Without the CUDA backend (or without a GPU) create() throws BackendError.
#pragma once
#include <memory>

#include "core/context.h"

namespace sy {

class DeviceRuntime {
 public:
  static std::unique_ptr<DeviceRuntime> create(int device = 0);
  virtual ~DeviceRuntime() = default;
  virtual Ctx& ctx() = 0;
  // Blocks until the stream's work is done (timing, host reads).
  virtual void synchronize() = 0;
  // Device memory: total and free bytes as the driver reports them.
  virtual size_t total_bytes() const = 0;
  virtual size_t free_bytes() const = 0;
  virtual const char* name() const = 0;
  // The device's dense bf16 tensor-core peak in TFLOP/s (datasheet, no
  // sparsity): the denominator of MFU. 0 where not known (MFU not reported).
  virtual double peak_tflops() const { return 0; }
};

// Times work on a stream with CUDA events (the device machine has no working
// profiler counters): start(), then stop() returns milliseconds.
class EventTimer {
 public:
  explicit EventTimer(Stream stream);
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start();
  float stop_ms();  // synchronises on the stop event

 private:
  Stream stream_;
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

}  // namespace sy
