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

// A second stream on a device context's device (RAII), for work that
// overlaps the compute stream (the gradient all-reduce): ctx() is the same
// context (allocator, device) on this stream, without cuBLAS handles (their
// workspace is the compute stream's): only non-BLAS ops run on it, and a GEMM
// there fails with "no cuBLASLt handle". A host context needs
// none: there ctx() is the host context itself.
class SideStream {
 public:
  explicit SideStream(const Ctx& ctx);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  Ctx& ctx() { return ctx_; }
  // Blocks until the work queued on this stream is done (nothing on the host).
  void synchronize();

 private:
  Ctx ctx_;
};

// Orders the later work of `waiter` after everything `after` has queued so
// far (a CUDA event; the host does not wait). Nothing for host streams.
void stream_wait(const Ctx& waiter, const Ctx& after);

// How long work queued on one stream ran past work queued on another, read
// later without waiting: mark(first, second) records an event on each;
// last_ms() is then max(0, t(second) - t(first)) of the latest marks once
// both have completed (before that, or on the host: 0). The gradient
// reducer reads a step's exposed all-reduce time at the next step this way.
class StreamLag {
 public:
  StreamLag() = default;
  ~StreamLag();
  StreamLag(const StreamLag&) = delete;
  StreamLag& operator=(const StreamLag&) = delete;
  void mark(const Ctx& first, const Ctx& second);
  double last_ms();

 private:
  void* first_ = nullptr;  // cudaEvent_t
  void* second_ = nullptr;
  bool marked_ = false;
};

// A point in one stream's work that another thread can wait for (RAII over
// a CUDA event, reusable): record(ctx) marks what ctx's stream has queued so
// far; wait_host() blocks the calling thread until that work is done. The
// gradient reducer's MPI thread waits this way for a bucket's gradients only,
// not for the whole device (backward's later kernels go on). Nothing on the
// host (record and wait return at once).
class StreamMark {
 public:
  StreamMark() = default;
  ~StreamMark();
  StreamMark(const StreamMark&) = delete;
  StreamMark& operator=(const StreamMark&) = delete;
  void record(const Ctx& ctx);
  void wait_host();

 private:
  void* event_ = nullptr;  // cudaEvent_t, created at the first device record
  bool recorded_ = false;
};

// Makes ctx's device the current one of the calling thread (a thread other
// than the runtime's own, which CUDA starts on device 0). Nothing on the host.
void use_device(const Ctx& ctx);

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
