#include "core/device_runtime.h"

#include <string>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/op_profile.h"

#ifdef SY_WITH_CUDA
#include <cublasLt.h>
#endif

namespace sy {

#ifdef SY_WITH_CUDA

namespace {

// Stream-ordered caching allocator on the device's default memory pool.
class CudaPoolAllocator final : public Allocator {
 public:
  explicit CudaPoolAllocator(int device) : device_(device) {
    // The device first (CudaRuntime sets it again after this member is
    // built): the pool calls below would otherwise make a context on the
    // current device, GPU 0 in a fresh process, from every rank of a node.
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, device));
    // Keep freed memory in the pool (a cache) instead of returning it to the driver.
    uint64_t never = UINT64_MAX;
    CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &never));
  }
  Device device() const override { return Device::cuda(device_); }
  void* allocate(size_t bytes, Stream s) override {
    void* p = nullptr;
    CUDA_CHECK(cudaMallocFromPoolAsync(&p, bytes, pool_, static_cast<cudaStream_t>(s.handle)));
    count_alloc(bytes);
    return p;
  }
  void deallocate(void* p, size_t bytes, Stream s) override {
    // A destructor must not throw: a failed free leaves the bytes counted,
    // and its error is cleared from the thread's last error, where the next
    // launch's check would report it as that kernel's.
    if (cudaFreeAsync(p, static_cast<cudaStream_t>(s.handle)) == cudaSuccess)
      count_free(bytes);
    else
      (void)cudaGetLastError();
  }
  size_t reserved_high() const override {
    uint64_t v = 0;  // (cuuint64_t)
    if (cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemHigh, &v) != cudaSuccess) return 0;
    return static_cast<size_t>(v);
  }

 private:
  int device_;
  cudaMemPool_t pool_ = nullptr;
};

class CudaRuntime final : public DeviceRuntime {
 public:
  explicit CudaRuntime(int device) : alloc_(device) {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaGetDeviceProperties(&props_, device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    CUBLAS_CHECK(cublasLtCreate(&lt_));
    // 32 MiB: cuBLASLt's recommendation for Hopper (one workspace per stream).
    workspace_bytes_ = 32u << 20;
    CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
    CUBLAS_CHECK(cublasSetWorkspace(cublas_, workspace_, workspace_bytes_));
    ctx_ = Ctx{Device::cuda(device), Stream{stream_}, &alloc_, BlasHandle{cublas_, lt_, workspace_, workspace_bytes_}};
  }
  ~CudaRuntime() override {
    cudaStreamSynchronize(stream_);
    cublasLtDestroy(lt_);
    cublasDestroy(cublas_);
    cudaFree(workspace_);
    cudaStreamDestroy(stream_);
  }
  Ctx& ctx() override { return ctx_; }
  void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  size_t total_bytes() const override { return props_.totalGlobalMem; }
  size_t free_bytes() const override {
    size_t free = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return free;
  }
  const char* name() const override { return props_.name; }
  double peak_tflops() const override {
    // NVIDIA's datasheet figures for Hopper (sm_90): SXM H100 and H200 989,
    // H100 NVL / H200 NVL 835, H100 PCIe 756. Other parts: not known here.
    if (props_.major != 9 || props_.minor != 0) return 0;
    const std::string n = props_.name;
    if (n.find("PCIe") != std::string::npos) return 756;
    if (n.find("NVL") != std::string::npos) return 835;
    return 989;
  }

 private:
  CudaPoolAllocator alloc_;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  Ctx ctx_;
};

}  // namespace

std::unique_ptr<DeviceRuntime> DeviceRuntime::create(int device) {
  if (!cuda_available()) throw BackendError("no CUDA device is visible (cudaGetDeviceCount found none)");
  return std::make_unique<CudaRuntime>(device);
}

EventTimer::EventTimer(Stream stream) : stream_(stream) {
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  start_ = a, stop_ = b;
}

EventTimer::~EventTimer() {
  cudaEventDestroy(static_cast<cudaEvent_t>(start_));
  cudaEventDestroy(static_cast<cudaEvent_t>(stop_));
}

void EventTimer::start() {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(start_), static_cast<cudaStream_t>(stream_.handle)));
}

float EventTimer::stop_ms() {
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(stop_), static_cast<cudaStream_t>(stream_.handle)));
  CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(stop_)));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start_), static_cast<cudaEvent_t>(stop_)));
  return ms;
}

namespace {
// Events recorded on the stream; created as the step first needs them (the
// first profiled step), then reused.
class CudaEventClock : public IntervalClock {
 public:
  explicit CudaEventClock(Stream s) : stream_(static_cast<cudaStream_t>(s.handle)) {}
  ~CudaEventClock() override {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }
  void mark(size_t slot) override {
    while (slot >= events_.size()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    CUDA_CHECK(cudaEventRecord(events_[slot], stream_));
  }
  void wait(size_t last_slot) override { CUDA_CHECK(cudaEventSynchronize(events_[last_slot])); }
  double ms(size_t a, size_t b) override {
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, events_[a], events_[b]));
    return ms;
  }
  const char* name() const override { return "cuda events"; }

 private:
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
};
}  // namespace

std::unique_ptr<IntervalClock> cuda_event_clock(Stream stream) { return std::make_unique<CudaEventClock>(stream); }

SideStream::SideStream(const Ctx& ctx) : ctx_(ctx) {
  if (ctx.device.is_cpu()) return;
  use_device(ctx);
  // The device's highest priority: its work (a gradient bucket's collective,
  // launched during backward, on this stream itself: comm/nccl_communicator.cc)
  // gets SMs as they free up instead of queueing behind the compute stream's.
  int least = 0, greatest = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, greatest));
  ctx_.stream = Stream{s};
  ctx_.profiler = nullptr;  // (the profiler times the compute stream)
  // No BLAS here: the handles' one workspace belongs to the compute stream's
  // GEMMs, and a GEMM on this stream would share it with them (a race). A
  // GEMM on a side stream fails on the missing handle instead.
  ctx_.blas = BlasHandle{};
}

SideStream::~SideStream() {
  if (ctx_.device.is_cpu()) return;
  cudaStreamSynchronize(static_cast<cudaStream_t>(ctx_.stream.handle));
  cudaStreamDestroy(static_cast<cudaStream_t>(ctx_.stream.handle));
}

void SideStream::synchronize() {
  if (!ctx_.device.is_cpu()) CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(ctx_.stream.handle)));
}

void stream_wait(const Ctx& waiter, const Ctx& after) {
  if (waiter.device.is_cpu() || waiter.stream.handle == after.stream.handle) return;
  cudaEvent_t e;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(e, static_cast<cudaStream_t>(after.stream.handle)));
  CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter.stream.handle), e, 0));
  CUDA_CHECK(cudaEventDestroy(e));  // (released once the wait is done)
}

void use_device(const Ctx& ctx) {
  if (!ctx.device.is_cpu()) CUDA_CHECK(cudaSetDevice(ctx.device.index));
}

StreamMark::~StreamMark() {
  if (event_) cudaEventDestroy(static_cast<cudaEvent_t>(event_));
}

void StreamMark::record(const Ctx& ctx) {
  if (ctx.device.is_cpu()) return;
  if (!event_) {
    cudaEvent_t e;
    // (a waiting thread sleeps rather than spins: ranks sharing the cores)
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync));
    event_ = e;
  }
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), static_cast<cudaStream_t>(ctx.stream.handle)));
  recorded_ = true;
}

void StreamMark::wait_host() {
  if (recorded_) CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
}

StreamLag::~StreamLag() {
  if (first_) cudaEventDestroy(static_cast<cudaEvent_t>(first_));
  if (second_) cudaEventDestroy(static_cast<cudaEvent_t>(second_));
}

void StreamLag::mark(const Ctx& first, const Ctx& second) {
  if (first.device.is_cpu()) return;
  if (!first_) {
    cudaEvent_t a, b;
    CUDA_CHECK(cudaEventCreate(&a));
    CUDA_CHECK(cudaEventCreate(&b));
    first_ = a, second_ = b;
  }
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(first_), static_cast<cudaStream_t>(first.stream.handle)));
  CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(second_), static_cast<cudaStream_t>(second.stream.handle)));
  marked_ = true;
}

double StreamLag::last_ms() {
  if (!marked_) return 0;
  auto a = static_cast<cudaEvent_t>(first_), b = static_cast<cudaEvent_t>(second_);
  if (!event_done(a) || !event_done(b)) return 0;  // not done: no wait
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return ms > 0 ? ms : 0;
}

#else

std::unique_ptr<DeviceRuntime> DeviceRuntime::create(int) {
  throw BackendError("this build of Switchyard has no CUDA backend (configure with SWITCHYARD_CUDA=ON)");
}
EventTimer::EventTimer(Stream stream) : stream_(stream) {
  throw BackendError("EventTimer: this build of Switchyard has no CUDA backend");
}
EventTimer::~EventTimer() = default;
void EventTimer::start() {}
float EventTimer::stop_ms() { return 0; }
std::unique_ptr<IntervalClock> cuda_event_clock(Stream) {
  throw BackendError("op profile on a CUDA stream: this build of Switchyard has no CUDA backend");
}
SideStream::SideStream(const Ctx& ctx) : ctx_(ctx) {
  if (!ctx.device.is_cpu()) throw BackendError("SideStream: this build of Switchyard has no CUDA backend");
}
SideStream::~SideStream() = default;
void SideStream::synchronize() {}
void stream_wait(const Ctx&, const Ctx&) {}
void use_device(const Ctx&) {}
StreamMark::~StreamMark() = default;
void StreamMark::record(const Ctx& ctx) {
  if (!ctx.device.is_cpu()) throw BackendError("StreamMark: this build of Switchyard has no CUDA backend");
}
void StreamMark::wait_host() {}
StreamLag::~StreamLag() = default;
void StreamLag::mark(const Ctx&, const Ctx&) {}
double StreamLag::last_ms() { return 0; }

#endif

}  // namespace sy
