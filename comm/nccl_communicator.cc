#include "comm/nccl_communicator.h"

#ifdef SY_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/cuda_check.h"
#endif

namespace sy::comm {

using detail::now_s;
using detail::ranks_str;

#ifndef SY_WITH_NCCL

std::string nccl_error_string(int code) { return "NCCL error " + std::to_string(code); }
bool nccl_available() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator&, int, double) {
  throw BackendError("this build of Switchyard has no NCCL (a CUDA build with NCCL found at configure time)");
}

#else

std::string nccl_error_string(int code) { return ncclGetErrorString(static_cast<ncclResult_t>(code)); }
bool nccl_available() { return true; }

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::f64: return ncclFloat64;
  }
  return ncclUint8;
}

// Held around every call into NCCL on a communicator (enqueue and settle):
// NCCL allows one thread at a time on a communicator, and the watchdog's
// ncclCommGetAsyncError on a non-blocking one completes (and frees) the same
// group job that settle() polls. The watchdog only try_locks it.
std::mutex& nccl_api_mutex() {
  static std::mutex* m = new std::mutex;  // (never destroyed: the watchdog outlives static destruction)
  return *m;
}

// Who asked for a collective, for its one-line error.
struct CallSite {
  int world_rank;
  std::string context;
  double timeout_s;
  std::string group;
};

// The one-line error of a collective that failed or did not complete in
// time, then ncclCommAbort (no kernel spins on) and exit 1 (mpirun ends the job).
[[noreturn]] void fail_collective(ncclComm_t comm, const char* op, const CallSite& at, const char* nccl_error) {
  if (nccl_error)
    std::fprintf(stderr, "error: rank %d: %s in '%s' failed: NCCL: %s (group of world ranks %s)\n", at.world_rank, op,
                 at.context.c_str(), nccl_error, at.group.c_str());
  else
    std::fprintf(stderr,
                 "error: rank %d: %s in '%s' did not complete within %g s (group of world ranks %s): "
                 "a rank is stuck or gone\n",
                 at.world_rank, op, at.context.c_str(), at.timeout_s, at.group.c_str());
  std::fflush(stderr);
  ncclCommAbort(comm);
  std::_Exit(1);
}

// Waits for a non-blocking NCCL call to leave ncclInProgress, at most the
// timeout (a peer that never joins the launch's connection set-up leaves it
// in progress for good): then the timeout line and exit, as the watchdog.
void settle(ncclComm_t comm, ncclResult_t r, const char* what, const CallSite& at) {
  const double start = now_s(), deadline = start + at.timeout_s;
  // An enqueue usually settles within microseconds: poll at once and yield
  // for the first 200 us, only then sleep between polls. (Sleeping 50 us
  // before the first poll put 120 us on every collective: bench_comm --nccl
  // at 1 rank, 1-16 MiB, took 128 us where ncclAlltoAll took 5.)
  while (r == ncclInProgress) {
    const double t = now_s();
    if (t > deadline) fail_collective(comm, what, at, nullptr);
    if (t - start < 200e-6)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    NCCL_CHECK(ncclCommGetAsyncError(comm, &r));
  }
  if (r != ncclSuccess)
    throw BackendError(std::string("NCCL: ") + what + ": " + ncclGetErrorString(r) + " (" + ncclGetLastError(comm) + ")");
}

// ncclGroupEnd on every way out of a group, a throw between start and end
// included (NCCL's group depth is per thread: one left open would silently
// group every later call). end() returns the result the caller settles.
class NcclGroup {
 public:
  NcclGroup() { NCCL_CHECK(ncclGroupStart()); }
  ~NcclGroup() {
    if (open_) ncclGroupEnd();
  }
  ncclResult_t end() {
    open_ = false;
    return ncclGroupEnd();
  }

 private:
  bool open_ = true;
};

// A collective in flight: its completion event and deadline.
struct Pending {
  ncclComm_t comm;
  int device;  // the communicator's: the watchdog's thread sets it before any CUDA call
  cudaEvent_t done;
  double deadline;
  const char* op;
  CallSite at;
};

// One per process: watches every NCCL collective in flight.
class Watchdog {
 public:
  static Watchdog& get() {
    static Watchdog* w = new Watchdog;  // never destroyed: its detached thread polls it to the end
    return *w;
  }
  void watch(Pending p) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(std::move(p));
  }
  // A communicator about to be destroyed (its stream drained): its entries
  // go, so the thread never queries a freed communicator. The caller holds
  // nccl_api_mutex (the thread only try-locks it while holding mu_: no
  // deadlock).
  void forget(ncclComm_t comm) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->comm != comm) {
        ++it;
        continue;
      }
      cudaEventDestroy(it->done);
      it = pending_.erase(it);
    }
  }

 private:
  Watchdog() {
    std::thread([this] {
      for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        std::lock_guard<std::mutex> lock(mu_);
        // A new thread starts on device 0: set the communicator's device
        // before touching its events, or the first query makes a context on
        // GPU 0 from every rank (~0.5 GiB each on rank 0's GPU).
        while (!pending_.empty() && cudaSetDevice(pending_.front().device) == cudaSuccess &&
               cudaEventQuery(pending_.front().done) == cudaSuccess) {
          cudaEventDestroy(pending_.front().done);
          pending_.pop_front();
        }
        if (pending_.empty()) continue;
        const Pending& p = pending_.front();
        {
          // Not while the main thread is inside NCCL on a communicator (its
          // own settle() has the same deadline).
          std::unique_lock<std::mutex> api(nccl_api_mutex(), std::try_to_lock);
          ncclResult_t async = ncclSuccess;
          if (api.owns_lock()) ncclCommGetAsyncError(p.comm, &async);
          if (async != ncclSuccess && async != ncclInProgress) fire(p, ncclGetErrorString(async));
        }
        if (now_s() > p.deadline) fire(p, nullptr);
      }
    }).detach();
  }
  [[noreturn]] static void fire(const Pending& p, const char* nccl_error) {
    fail_collective(p.comm, p.op, p.at, nccl_error);
  }
  std::mutex mu_;
  std::deque<Pending> pending_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, std::vector<int> world_ranks, double timeout_s)
      : comm_(comm), device_(device), world_ranks_(std::move(world_ranks)) {
    timeout_s_ = timeout_s;
    NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    NCCL_CHECK(ncclCommCount(comm_, &size_));
    CUDA_CHECK(cudaSetDevice(device_));
    // The highest priority the device has: a gradient bucket's all-reduce,
    // launched during backward, gets SMs as they free up instead of queueing
    // behind the backward's kernels (whose SMs it needs few of).
    int least = 0, greatest = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  }
  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
    for (const auto& [start, done] : timings_) cudaEventDestroy(start), cudaEventDestroy(done);
    // Not while the watchdog reads this communicator: it leaves the watch
    // list first (its collectives are done, the stream being drained).
    std::lock_guard<std::mutex> api(nccl_api_mutex());
    Watchdog::get().forget(comm_);
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::vector<int> world_ranks() const override { return world_ranks_; }
  // One thread only (NCCL's rule for a communicator, and one issue order on
  // every rank); collectives are stream-ordered, so overlap comes from a
  // second stream instead (runtime/grad_reducer.h's stream mode).
  bool concurrent_collectives() const override { return false; }
  bool stream_ordered() const override { return true; }

  std::unique_ptr<Communicator> split(int color, int key) const override {
    // (A rank in no group would get no child handle, which the wait below
    // would take for a hang.)
    SY_CHECK(color >= 0, "communicator split: color " << color << " (every rank joins a group: color >= 0)");
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t sub = nullptr;
    std::lock_guard<std::mutex> api(nccl_api_mutex());
    const CallSite at{world_ranks_[rank_], "communicator split", timeout_s_, ranks_str(world_ranks_)};
    settle(comm_, ncclCommSplit(comm_, color, key, &sub, &config), "ncclCommSplit", at);
    // A non-blocking split returns before the child exists: NCCL's own
    // thread stores its handle when the split is done (null until then,
    // whatever the parent's state says; a call on the null handle is refused
    // as an invalid argument, which the first GPU run met at ncclCommCount,
    // then at ncclCommGetAsyncError). Wait for the handle, then for the
    // child's own state.
    const double deadline = now_s() + timeout_s_;
    while (__atomic_load_n(&sub, __ATOMIC_ACQUIRE) == nullptr) {
      if (now_s() > deadline) fail_collective(comm_, "ncclCommSplit", at, nullptr);
      ncclResult_t parent = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &parent));
      if (parent != ncclSuccess && parent != ncclInProgress) settle(comm_, parent, "ncclCommSplit", at);  // (throws)
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    settle(sub, ncclInProgress, "ncclCommSplit", at);
    // The new group's members, as world ranks: gathered over the new group.
    int n = 0;
    NCCL_CHECK(ncclCommCount(sub, &n));
    int* buf = nullptr;
    CUDA_CHECK(cudaMalloc(&buf, sizeof(int) * (n + 1)));
    const int mine = world_ranks_[rank_];
    CUDA_CHECK(cudaMemcpy(buf + n, &mine, sizeof(int), cudaMemcpyHostToDevice));
    settle(sub, ncclAllGather(buf + n, buf, 1, ncclInt32, sub, stream_), "ncclAllGather", at);
    std::vector<int> members(n);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    CUDA_CHECK(cudaMemcpy(members.data(), buf, sizeof(int) * n, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFree(buf));
    return std::make_unique<NcclCommunicator>(sub, device_, members, timeout_s_);
  }

  void all_to_all_counts(const std::vector<int64_t>& send, std::vector<int64_t>& recv, const char* context) override {
    SY_CHECK(!send.empty() && send.size() % size_ == 0,
             "all_to_all_counts in '" << context << "': " << send.size() << " counts for a group of " << size_);
    const int64_t n = static_cast<int64_t>(send.size()) / size_;
    Tensor s = Tensor::from_host(send), r = Tensor::from_host(send);
    std::vector<int64_t> rows(size_, n);
    all_to_all_v(s, rows, r, rows, Stream{}, context);
    recv = r.to_vector<int64_t>();
  }

  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                    const std::vector<int64_t>& recv_rows, Stream stream, const char* context) override {
    SY_CHECK(static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_,
             "all_to_all_v in '" << context << "': counts for " << send_rows.size() << "/" << recv_rows.size()
                                 << " ranks, group of " << size_);
    SY_CHECK(send.dtype() == recv.dtype(), "all_to_all_v in '" << context << "': dtypes differ");
    const int64_t w = row_elems(send.numel() > 0 ? send : recv);
    // The plan against the buffers (as the MPI path checks): a mismatch
    // would write past recv on the device, silently.
    int64_t ns = 0, nr = 0;
    for (int p = 0; p < size_; ++p) ns += send_rows[p], nr += recv_rows[p];
    const int64_t send_len = send.ndim() == 0 ? 0 : send.dim(0), recv_len = recv.ndim() == 0 ? 0 : recv.dim(0);
    SY_CHECK(ns == send_len && nr == recv_len && (send.numel() == 0 || recv.numel() == 0 || row_elems(recv) == w),
             "all_to_all_v in '" << context << "': " << ns << " rows sent of " << send_len << ", " << nr
                                 << " received into " << recv_len << ", rows of " << w << " / " << row_elems(recv)
                                 << " elements");
    check_stream(send, stream, "all_to_all_v", context);
    check_stream(recv, stream, "all_to_all_v", context);
    Staged s(*this, const_cast<Tensor&>(send), false), r(*this, recv, true);
    const size_t esize = dtype_size(send.dtype());
    run("all_to_all_v", context, stream, [&] {
      NcclGroup group;
      int64_t so = 0, ro = 0;
      for (int p = 0; p < size_; ++p) {
        if (send_rows[p] > 0)
          NCCL_CHECK(ncclSend(static_cast<const char*>(s.ptr()) + so * w * esize, send_rows[p] * w,
                              nccl_type(send.dtype()), p, comm_, stream_));
        if (recv_rows[p] > 0)
          NCCL_CHECK(ncclRecv(static_cast<char*>(r.ptr()) + ro * w * esize, recv_rows[p] * w, nccl_type(recv.dtype()),
                              p, comm_, stream_));
        so += send_rows[p], ro += recv_rows[p];
      }
      return group.end();
    });
  }

  void all_reduce_sum(Tensor& t, Stream stream, const char* context) override {
    check_stream(t, stream, "all_reduce", context);
    Staged s(*this, t, true);
    run("all_reduce", context, stream, [&] {
      return ncclAllReduce(s.ptr(), s.ptr(), t.numel(), nccl_type(t.dtype()), ncclSum, comm_, stream_);
    });
  }

  void broadcast(Tensor& t, int root, Stream stream, const char* context) override {
    check_stream(t, stream, "broadcast", context);
    Staged s(*this, t, true);
    run("broadcast", context, stream, [&] {
      return ncclBroadcast(s.ptr(), s.ptr(), t.numel(), nccl_type(t.dtype()), root, comm_, stream_);
    });
  }

  void barrier(const char* context) override {
    Tensor one = Tensor::from_host(std::vector<int32_t>{1});
    all_reduce_sum(one, Stream{}, context);
  }

  void settle_comm_seconds() override { settle_timings(true); }

 private:
  // A device tensor's collective waits for the caller's stream (an event on
  // it): the legacy default stream (Stream{}) does not order the non-blocking
  // streams that wrote the tensor, so NCCL could read it unfinished. Host
  // tensors are staged (copied before the call returns) and need none.
  static void check_stream(const Tensor& t, Stream s, const char* op, const char* context) {
    SY_CHECK(t.device().is_cpu() || t.numel() == 0 || s.handle != nullptr,
             "NCCL " << op << " in '" << context << "': a device tensor needs the stream that wrote it, not Stream{}");
  }
  static int64_t row_elems(const Tensor& t) { return t.ndim() == 0 || t.dim(0) == 0 ? 1 : t.numel() / t.dim(0); }

  // A tensor's bytes in device memory for the collective: the tensor itself
  // when it is on a device, else a staged copy (copied back when `out`).
  class Staged {
   public:
    Staged(NcclCommunicator& c, Tensor& t, bool out) : c_(c), t_(t), out_(out) {
      if (!t.device().is_cpu() || t.nbytes() == 0) return;
      CUDA_CHECK(cudaMallocAsync(&buf_, t.nbytes(), c.stream_));
      CUDA_CHECK(cudaMemcpyAsync(buf_, t.raw(), t.nbytes(), cudaMemcpyHostToDevice, c.stream_));
    }
    ~Staged() {
      if (!buf_) return;
      if (out_) {
        cudaMemcpyAsync(t_.raw(), buf_, t_.nbytes(), cudaMemcpyDeviceToHost, c_.stream_);
        cudaStreamSynchronize(c_.stream_);
      }
      cudaFreeAsync(buf_, c_.stream_);
    }
    void* ptr() { return buf_ ? buf_ : t_.raw(); }

   private:
    NcclCommunicator& c_;
    Tensor& t_;
    bool out_;
    void* buf_ = nullptr;
  };

  // Orders `enqueue` (NCCL calls on stream_) after the caller's stream and
  // the caller's later work after it; times it; hands it to the watchdog.
  template <class F>
  void run(const char* op, const char* context, Stream caller, F&& enqueue) {
    auto cs = static_cast<cudaStream_t>(caller.handle);
    cudaEvent_t ready, start, done;
    CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&done));
    CUDA_CHECK(cudaEventRecord(ready, cs));
    CUDA_CHECK(cudaStreamWaitEvent(stream_, ready, 0));
    CUDA_CHECK(cudaEventRecord(start, stream_));
    CallSite at{world_ranks_[rank_], context, timeout_s_, ranks_str(world_ranks_)};
    {
      std::lock_guard<std::mutex> api(nccl_api_mutex());
      settle(comm_, enqueue(), op, at);
    }
    CUDA_CHECK(cudaEventRecord(done, stream_));
    CUDA_CHECK(cudaStreamWaitEvent(cs, done, 0));
    cudaEvent_t watched;
    CUDA_CHECK(cudaEventCreateWithFlags(&watched, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(watched, stream_));
    Watchdog::get().watch({comm_, device_, watched, now_s() + timeout_s_, op, std::move(at)});
    timings_.push_back({start, done});
    cudaEventDestroy(ready);
    settle_timings(false);
  }

  // Counts the time of the collectives that are done, in queue order; with
  // `wait`, of every one (a hung one ends the process by the watchdog).
  void settle_timings(bool wait) {
    while (!timings_.empty()) {
      const auto [start, done] = timings_.front();
      if (wait) CUDA_CHECK(cudaEventSynchronize(done));
      else if (cudaEventQuery(done) != cudaSuccess) break;
      float ms = 0;
      cudaEventElapsedTime(&ms, start, done);
      comm_seconds_ += ms / 1e3;
      cudaEventDestroy(start);
      cudaEventDestroy(done);
      timings_.pop_front();
    }
  }

  ncclComm_t comm_;
  int device_;
  std::vector<int> world_ranks_;
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
  std::deque<std::pair<cudaEvent_t, cudaEvent_t>> timings_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& mpi, int device, double timeout_s) {
  CUDA_CHECK(cudaSetDevice(device));
  ncclUniqueId id;
  if (mpi.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  static_assert(sizeof id % 4 == 0, "ncclUniqueId travels as 32-bit words");
  Tensor idt = Tensor::empty({static_cast<int64_t>(sizeof id / 4)}, DType::i32, host_ctx());
  std::memcpy(idt.raw(), &id, sizeof id);
  mpi.broadcast(idt, 0, Stream{}, "NCCL unique id");
  std::memcpy(&id, idt.raw(), sizeof id);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const double deadline = now_s() + timeout_s;
  ncclResult_t r = ncclCommInitRankConfig(&comm, mpi.size(), id, mpi.rank(), &config);
  while (r == ncclInProgress) {
    if (now_s() > deadline) {
      ncclCommAbort(comm);
      throw BackendError("NCCL communicator set-up did not complete within " + std::to_string(timeout_s) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    NCCL_CHECK(ncclCommGetAsyncError(comm, &r));
  }
  if (r != ncclSuccess) throw BackendError(std::string("NCCL: ncclCommInitRankConfig: ") + ncclGetErrorString(r));
  return std::make_unique<NcclCommunicator>(comm, device, mpi.world_ranks(), timeout_s);
}

#endif

}  // namespace sy::comm
