// NcclCommunicator (design in the header). Blocking communicators by
// default: with a non-blocking one every ncclGroupEnd returns ncclInProgress
// and creates a thread to launch the group (NCCL 2.23 on: src/group.cc,
// ncclGroupEndInternal), which put ~40 us of host time on each collective:
// our all_to_all_v took 45.7, 48.2, 54.4, 57.7 and 160.4 us at 1, 4, 16, 64
// and 256 MiB (bench_comm --nccl, 1 rank, H200) where ncclAlltoAll on a
// blocking communicator took 6.1, 6.3, 6.8, 34.8 and 129.0. A blocking call
// can hang on the host instead (a peer that never joins), so the watchdog
// holds each call from before it enters NCCL (Watch), not from after it
// returns. NcclMode::nonblocking keeps NCCL's own asynchronous error path
// (settle() polls each call out of ncclInProgress).
#include "comm/nccl_communicator.h"

#include <stdlib.h>  // setenv (POSIX)

#include <cstdlib>

#ifdef SY_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/cuda_check.h"
#endif

namespace sy::comm {

using detail::now_s;
using detail::ranks_str;

bool nccl_launch_order_default() {
  if (std::getenv("NCCL_LAUNCH_ORDER_IMPLICIT") != nullptr) return false;  // (the user's choice, 0 included)
  return setenv("NCCL_LAUNCH_ORDER_IMPLICIT", "1", /*overwrite=*/0) == 0;
}

#ifndef SY_WITH_NCCL

std::string nccl_error_string(int code) { return "NCCL error " + std::to_string(code); }
bool nccl_available() { return false; }
std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator&, int, double, NcclMode) {
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
// group job that settle() polls. The watchdog only try_locks it: a blocking
// enqueue stuck inside NCCL (a peer that never joins) holds it for good, and
// the watchdog's deadline must still fire.
std::mutex& nccl_api_mutex() {
  static std::mutex* m = new std::mutex;  // (never destroyed: the watchdog outlives static destruction)
  return *m;
}

// Who asked for a collective, for its one-line error.
struct CallSite {
  int world_rank;
  std::string context;
  double timeout_s;
  const std::string* group;  // the communicator's (its entries are forgotten before it goes)
  int device;  // the communicator's: the abort's thread sets it (a new thread starts on device 0)
};

// How long the failing path waits for ncclCommAbort before exiting anyway.
constexpr double kAbortWaitS = 5;

// ncclCommAbort (no kernel spins on), waited for at most kAbortWaitS. On its
// own thread: with a blocking communicator the main thread may be inside
// NCCL on the same communicator (a group launch waiting for a peer's
// connection), and the abort may wait for it; the process exits either way.
void abort_bounded(ncclComm_t comm, int device) {
  if (!comm) return;  // (a communicator still being created: nothing of it runs on the device)
  auto aborted = std::make_shared<std::atomic<bool>>(false);
  try {
    std::thread([comm, device, aborted] {
      cudaSetDevice(device);
      ncclCommAbort(comm);
      aborted->store(true);
    }).detach();
  } catch (...) {
    return;  // no thread to abort on: exit without it
  }
  const double until = now_s() + kAbortWaitS;
  while (!aborted->load() && now_s() < until) std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

// The one-line error of a collective that failed or did not complete in
// time, then ncclCommAbort and exit 1 (mpirun ends the job). Once a
// process: the watchdog and a non-blocking settle() share a deadline, and
// the second to get here waits for the first to end the process.
// `error`: what failed, or null for a timeout.
[[noreturn]] void fail_collective(ncclComm_t comm, const char* op, const CallSite& at, const char* error) {
  static std::atomic<bool> failing{false};
  if (failing.exchange(true))
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  if (error)
    std::fprintf(stderr, "error: rank %d: %s in '%s' failed: %s (group of world ranks %s)\n", at.world_rank, op,
                 at.context.c_str(), error, at.group->c_str());
  else
    std::fprintf(stderr,
                 "error: rank %d: %s in '%s' did not complete within %g s (group of world ranks %s): "
                 "a rank is stuck or gone\n",
                 at.world_rank, op, at.context.c_str(), at.timeout_s, at.group->c_str());
  std::fflush(stderr);
  abort_bounded(comm, at.device);
  std::_Exit(1);
}

// Waits for a non-blocking NCCL call to leave ncclInProgress, at most the
// timeout (a peer that never joins the launch's connection set-up leaves it
// in progress for good): then the timeout line and exit, as the watchdog.
// A blocking communicator's calls return ncclSuccess or an error, never
// ncclInProgress: then only the error is checked.
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

// A CUDA event shared by whoever still needs it (the timing list, the
// watchdog), back in its pool when the last lets go.
using EventRef = std::shared_ptr<CUevent_st>;

// Timing events for the collectives, reused: creating and destroying three
// or four a collective was part of the ~40 us of host time each one cost.
// Thread-safe: the watchdog's thread hands events back too. Every event must
// be back before the pool goes (~NcclCommunicator: the timing list cleared,
// the watchdog's entries forgotten).
class EventPool {
 public:
  EventPool() = default;
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;
  ~EventPool() {
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
  }
  EventRef take() {
    cudaEvent_t e = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        e = free_.back();
        free_.pop_back();
      }
    }
    if (!e) CUDA_CHECK(cudaEventCreate(&e));
    return EventRef(e, [this](cudaEvent_t back) {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(back);
    });
  }

 private:
  std::mutex mu_;
  std::vector<cudaEvent_t> free_;
};

// A collective (or a communicator's creation or split) being watched: its
// deadline from before the call into NCCL, and its completion event once
// recorded.
struct Pending {
  uint64_t id;      // (set by Watchdog::watch)
  ncclComm_t comm;  // null while the communicator is being created (nothing to abort)
  EventRef done;    // null until armed: before that the entry ends by its deadline or is withdrawn
  double deadline;
  const char* op;
  CallSite at;
};

// One per process: watches every NCCL call in flight. Past an entry's
// deadline, or on an asynchronous error of its communicator, the one-line
// error, ncclCommAbort and exit 1 (fail_collective).
class Watchdog {
 public:
  static Watchdog& get() {
    static Watchdog* w = new Watchdog;  // never destroyed: its detached thread polls it to the end
    return *w;
  }
  uint64_t watch(Pending p) {
    std::lock_guard<std::mutex> lock(mu_);
    p.id = ++last_id_;
    pending_.push_back(std::move(p));
    return last_id_;
  }
  // The call has been enqueued and `done` recorded after it: the entry ends
  // when the event completes.
  void arm(uint64_t id, EventRef done) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.rbegin(); it != pending_.rend(); ++it)  // (usually the newest)
      if (it->id == id) {
        it->done = std::move(done);
        return;
      }
  }
  // The call is over without an event to wait for (it threw, or the caller
  // waited for it itself).
  void withdraw(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.rbegin(); it != pending_.rend(); ++it)
      if (it->id == id) {
        pending_.erase(std::next(it).base());
        return;
      }
  }
  // A communicator about to be destroyed (its stream drained): its entries
  // go, so the thread never queries a freed communicator, and their events
  // return to its pool. The caller holds nccl_api_mutex (the thread only
  // try-locks it while holding mu_: no deadlock).
  void forget(ncclComm_t comm) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->comm == comm)
        it = pending_.erase(it);
      else
        ++it;
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
        // GPU 0 from every rank (~0.5 GiB each on rank 0's GPU). An entry
        // not yet armed stays (its call has not returned from NCCL).
        while (!pending_.empty() && pending_.front().done &&
               cudaSetDevice(pending_.front().at.device) == cudaSuccess &&
               cudaEventQuery(pending_.front().done.get()) == cudaSuccess)
          pending_.pop_front();
        (void)cudaGetLastError();  // (a "not ready" answer above, core/cuda_check.h's event_done says why)
        if (pending_.empty()) continue;
        const Pending& p = pending_.front();
        if (p.comm) {
          // Not while a thread is inside NCCL on a communicator (a blocking
          // enqueue that hangs holds the mutex: the deadline below fires).
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
    fail_collective(p.comm, p.op, p.at, nccl_error ? (std::string("NCCL: ") + nccl_error).c_str() : nullptr);
  }
  std::mutex mu_;
  std::deque<Pending> pending_;
  uint64_t last_id_ = 0;
};

// A call's watchdog entry, from before the call into NCCL (a blocking one
// can hang on the host: a peer that never joins the connection set-up, a
// member that never joins a split) until its completion event is handed
// over (arm) or, on every other way out, withdrawn.
class Watch {
 public:
  explicit Watch(Pending p) : id_(Watchdog::get().watch(std::move(p))) {}
  ~Watch() {
    if (id_) Watchdog::get().withdraw(id_);
  }
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  void arm(EventRef done) {
    Watchdog::get().arm(id_, std::move(done));
    id_ = 0;
  }

 private:
  uint64_t id_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, std::vector<int> world_ranks, double timeout_s, NcclMode mode)
      : comm_(comm),
        device_(device),
        mode_(mode),
        world_ranks_(std::move(world_ranks)),
        group_(ranks_str(world_ranks_)) {
    timeout_s_ = timeout_s;
    NCCL_CHECK(ncclCommUserRank(comm_, &rank_));
    NCCL_CHECK(ncclCommCount(comm_, &size_));
    CUDA_CHECK(cudaSetDevice(device_));
    CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    // stream_ carries the hop of staged host tensors and the legacy stream's
    // callers (run()); at the device's highest priority, as the gradient
    // reducer's side stream that carries its bucket collectives.
    int least = 0, greatest = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  }
  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    // Every collective done before the communicator goes: those on callers'
    // streams by their done events (the uncounted ones are all in
    // timings_), the staged ones by stream_.
    for (const auto& t : timings_) cudaEventSynchronize(t.second.get());
    cudaStreamSynchronize(stream_);
    timings_.clear();
    // Not while the watchdog reads this communicator: it leaves the watch
    // list first (its collectives are done, the stream being drained), and
    // its events go back to events_ before that goes (after this body).
    std::lock_guard<std::mutex> api(nccl_api_mutex());
    Watchdog::get().forget(comm_);
    ncclCommDestroy(comm_);
    cudaEventDestroy(ready_);
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
    config.blocking = mode_ == NcclMode::blocking ? 1 : 0;
    ncclComm_t sub = nullptr;
    const CallSite at{world_ranks_[rank_], "communicator split", timeout_s_, &group_, device_};
    // Watched from here to the members read back: a blocking split waits
    // inside NCCL until every member has joined (one that never does would
    // hang it), and the members' all-gather below is waited for too.
    Watch watch({0, comm_, nullptr, now_s() + timeout_s_, "ncclCommSplit", at});
    std::lock_guard<std::mutex> api(nccl_api_mutex());
    settle(comm_, ncclCommSplit(comm_, color, key, &sub, &config), "ncclCommSplit", at);
    // A non-blocking split returns before the child exists: NCCL's own
    // thread stores its handle when the split is done (null until then,
    // whatever the parent's state says; a call on the null handle is refused
    // as an invalid argument, which the first GPU run met at ncclCommCount,
    // then at ncclCommGetAsyncError). Wait for the handle, then for the
    // child's own state. (A blocking split returns with the child made: both
    // waits end at once.)
    const double deadline = now_s() + timeout_s_;
    while (__atomic_load_n(&sub, __ATOMIC_ACQUIRE) == nullptr) {
      if (now_s() > deadline) fail_collective(comm_, "ncclCommSplit", at, nullptr);
      ncclResult_t parent = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &parent));
      if (parent != ncclSuccess && parent != ncclInProgress) settle(comm_, parent, "ncclCommSplit", at);  // (throws)
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    settle(sub, ncclInProgress, "ncclCommSplit", at);
    // And for the parent's: NCCL stores the child's handle before it sets
    // the parent back from in progress (and joins its split thread), and a
    // call on a parent still in progress - the next split - is refused.
    settle(comm_, ncclInProgress, "ncclCommSplit", at);
    // The new group's members, as world ranks: gathered over the new group.
    int n = 0;
    NCCL_CHECK(ncclCommCount(sub, &n));
    int* buf = nullptr;
    CUDA_CHECK(cudaMalloc(&buf, sizeof(int) * (n + 1)));
    const int mine = world_ranks_[rank_];
    // (on stream_, the all-gather's: cudaMemcpy from pageable memory may
    // return before its DMA lands, and stream_ does not wait for the legacy
    // stream; the bytes of `mine` are staged before the call returns)
    CUDA_CHECK(cudaMemcpyAsync(buf + n, &mine, sizeof(int), cudaMemcpyHostToDevice, stream_));
    settle(sub, ncclAllGather(buf + n, buf, 1, ncclInt32, sub, stream_), "ncclAllGather", at);
    std::vector<int> members(n);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    CUDA_CHECK(cudaMemcpy(members.data(), buf, sizeof(int) * n, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFree(buf));
    return std::make_unique<NcclCommunicator>(sub, device_, members, timeout_s_, mode_);
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
    SY_CHECK(send_rows[rank_] == recv_rows[rank_], "all_to_all_v in '" << context << "': rank " << rank_ << " sends "
                                                   << send_rows[rank_] << " rows to itself and receives "
                                                   << recv_rows[rank_]);
    // (Our own rows are copied before the others are sent: with one buffer
    // for both, the copy would overwrite rows still to be sent.)
    detail::check_disjoint(send, recv, context);
    // Each peer's first row in send and recv.
    std::vector<int64_t> so(size_ + 1, 0), ro(size_ + 1, 0);
    for (int p = 0; p < size_; ++p) so[p + 1] = so[p] + send_rows[p], ro[p + 1] = ro[p] + recv_rows[p];
    Staged s(*this, const_cast<Tensor&>(send), false), r(*this, recv, true);
    const size_t esize = dtype_size(send.dtype());
    auto sent = [&](int p) { return static_cast<const char*>(s.ptr()) + so[p] * w * esize; };
    auto received = [&](int p) { return static_cast<char*>(r.ptr()) + ro[p] * w * esize; };
    run("all_to_all_v", context, stream, s.staged() || r.staged(), [&](cudaStream_t st) {
      // Our own rows move by a device copy on the same stream, not a send to
      // ourselves: NCCL takes a self pair through its point-to-point path
      // (channels and a proxy step, about 8-18 us more than ncclAlltoAll at
      // 1-16 MiB on one H200 rank, docs/PERF.md), where a copy runs at the
      // device's copy rate. The other ranks' rows go in one group after it.
      if (send_rows[rank_] > 0)
        CUDA_CHECK(cudaMemcpyAsync(received(rank_), sent(rank_), send_rows[rank_] * w * esize,
                                   cudaMemcpyDeviceToDevice, st));
      NcclGroup group;
      for (int p = 0; p < size_; ++p) {
        if (p == rank_) continue;
        if (send_rows[p] > 0) NCCL_CHECK(ncclSend(sent(p), send_rows[p] * w, nccl_type(send.dtype()), p, comm_, st));
        if (recv_rows[p] > 0)
          NCCL_CHECK(ncclRecv(received(p), recv_rows[p] * w, nccl_type(recv.dtype()), p, comm_, st));
      }
      return group.end();
    });
    r.finish();
    s.finish();
  }

  void all_reduce_sum(Tensor& t, Stream stream, const char* context) override {
    check_stream(t, stream, "all_reduce", context);
    Staged s(*this, t, true);
    run("all_reduce", context, stream, s.staged(), [&](cudaStream_t st) {
      return ncclAllReduce(s.ptr(), s.ptr(), t.numel(), nccl_type(t.dtype()), ncclSum, comm_, st);
    });
    s.finish();
  }

  void broadcast(Tensor& t, int root, Stream stream, const char* context) override {
    check_stream(t, stream, "broadcast", context);
    Staged s(*this, t, true);
    run("broadcast", context, stream, s.staged(), [&](cudaStream_t st) {
      return ncclBroadcast(s.ptr(), s.ptr(), t.numel(), nccl_type(t.dtype()), root, comm_, st);
    });
    s.finish();
  }

  // Equal parts: ncclAllGather in place (rank r's part at r x count, as
  // NCCL's in-place form wants it); uneven: one group of in-place
  // broadcasts, a part each from its rank (NCCL has no all-gather-v).
  void all_gather_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context) override {
    over_parts(
        "all_gather_v", t, rows, stream, context,
        [&](char* base, char* mine, size_t count, ncclDataType_t type, cudaStream_t st) {
          return ncclAllGather(mine, base, count, type, comm_, st);
        },
        [&](char* part, size_t count, ncclDataType_t type, int r, cudaStream_t st) {
          return ncclBroadcast(part, part, count, type, r, comm_, st);
        });
  }

  // Equal parts: ncclReduceScatter in place (our part at rank x count);
  // uneven: one group of in-place reduces, a part each to its rank.
  void reduce_scatter_sum_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream,
                            const char* context) override {
    over_parts(
        "reduce_scatter_sum_v", t, rows, stream, context,
        [&](char* base, char* mine, size_t count, ncclDataType_t type, cudaStream_t st) {
          return ncclReduceScatter(base, mine, count, type, ncclSum, comm_, st);
        },
        [&](char* part, size_t count, ncclDataType_t type, int r, cudaStream_t st) {
          return ncclReduce(part, part, count, type, ncclSum, r, comm_, st);
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

  // An in-place collective over t's parts (all_gather_v, reduce_scatter_sum_v):
  // where every part has as many rows, equal(base, our part, count a part);
  // else one group of part(a part, its count, its rank) over the non-empty
  // parts, in rank order on every rank.
  template <typename Equal, typename Part>
  void over_parts(const char* op, Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context,
                  Equal equal, Part part) {
    const std::vector<int64_t> first = detail::check_parts(t, rows, size_, op, context);
    check_stream(t, stream, op, context);
    if (size_ == 1) return;
    const int64_t w = row_elems(t);
    const bool same = std::all_of(rows.begin(), rows.end(), [&](int64_t r) { return r == rows[0]; });
    Staged s(*this, t, true);
    char* base = static_cast<char*>(s.ptr());
    const size_t row_bytes = w * dtype_size(t.dtype());
    const ncclDataType_t type = nccl_type(t.dtype());
    run(op, context, stream, s.staged(), [&](cudaStream_t st) {
      if (same) return equal(base, base + first[rank_] * row_bytes, static_cast<size_t>(rows[0] * w), type, st);
      NcclGroup group;
      for (int r = 0; r < size_; ++r)
        if (rows[r] > 0) NCCL_CHECK(part(base + first[r] * row_bytes, static_cast<size_t>(rows[r] * w), type, r, st));
      return group.end();
    });
    s.finish();
  }

  // A tensor's bytes in device memory for the collective: the tensor itself
  // when it is on a device, else a staged copy (copied back when `out`).
  class Staged {
   public:
    Staged(NcclCommunicator& c, Tensor& t, bool out) : c_(c), t_(t), out_(out) {
      if (!t.device().is_cpu() || t.nbytes() == 0) return;
      CUDA_CHECK(cudaMallocAsync(&buf_, t.nbytes(), c.stream_));
      CUDA_CHECK(cudaMemcpyAsync(buf_, t.raw(), t.nbytes(), cudaMemcpyHostToDevice, c.stream_));
    }
    // Waits for the stream either way: the caller may write the host tensor
    // as soon as the collective returns, and a copy from pinned memory (a
    // send) is still reading it until the stream gets there (from pageable
    // memory cudaMemcpyAsync returns only once it has read it, so the wait
    // is then for the collective alone; the watchdog's entry, armed on its
    // `done` event, still covers it).
    // finish() after the collective: the copy back and the wait checked (a
    // failed copy back would leave the host tensor stale, unsaid); buf_ is
    // let go only once they pass. The destructor does the same where
    // finish() was not reached or threw (unwinding), where it must not
    // throw: its errors are dropped, and cleared from the thread's last
    // error so that no later check names an unrelated op.
    void finish() {
      if (!buf_) return;
      if (out_) CUDA_CHECK(cudaMemcpyAsync(t_.raw(), buf_, t_.nbytes(), cudaMemcpyDeviceToHost, c_.stream_));
      CUDA_CHECK(cudaStreamSynchronize(c_.stream_));
      CUDA_CHECK(cudaFreeAsync(std::exchange(buf_, nullptr), c_.stream_));
    }
    ~Staged() {
      if (!buf_) return;
      if (out_) (void)cudaMemcpyAsync(t_.raw(), buf_, t_.nbytes(), cudaMemcpyDeviceToHost, c_.stream_);
      (void)cudaStreamSynchronize(c_.stream_);
      (void)cudaFreeAsync(buf_, c_.stream_);
      (void)cudaGetLastError();
    }
    void* ptr() { return buf_ ? buf_ : t_.raw(); }
    bool staged() const { return buf_ != nullptr; }  // (copied on c_.stream_)

   private:
    NcclCommunicator& c_;
    Tensor& t_;
    bool out_;
    void* buf_ = nullptr;
  };

  // Runs `enqueue` (the NCCL calls, on the stream it is given), timed by
  // events around it, watched from before the enqueue (a blocking one can
  // hang on the host) to its `done` event. Device tensors on the caller's
  // stream: on that stream itself, ordered as the caller's own work (as a
  // user calls ncclAlltoAll), so a call costs two event records. Staged host
  // tensors (copied on stream_) and the legacy stream's callers hop onto
  // stream_ and back: two records and two stream waits more, host calls of
  // about a microsecond each, where ncclAlltoAll takes 5-7 us at 1-16 MiB
  // (H200) and issue 19 asks for 80% of its rate. (Overlap with
  // compute comes from the caller's stream: the gradient reducer's side
  // stream, of the device's highest priority, core/device_runtime.h.)
  template <class F>
  void run(const char* op, const char* context, Stream caller, bool staged, F&& enqueue) {
    auto cs = static_cast<cudaStream_t>(caller.handle);
    const bool direct = cs != nullptr && !staged;
    cudaStream_t st = direct ? cs : stream_;
    const CallSite at{world_ranks_[rank_], context, timeout_s_, &group_, device_};
    Watch watch({0, comm_, nullptr, now_s() + timeout_s_, op, at});
    EventRef start = events_.take(), done = events_.take();
    if (!direct) {
      // (ready_ is recorded anew each call: a stream wait takes the record
      // made before it, whatever comes after.)
      CUDA_CHECK(cudaEventRecord(ready_, cs));
      CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    }
    CUDA_CHECK(cudaEventRecord(start.get(), st));
    {
      std::lock_guard<std::mutex> api(nccl_api_mutex());
      // A failure here ends the job as a timeout does, not by a throw: a
      // group's call refused after others of it were queued leaves those
      // on the stream, waiting on peers that will never post theirs, and
      // the unwinding would then wait on that stream unwatched (Staged's
      // copy back, the destructor's drain) with this entry withdrawn.
      try {
        settle(comm_, enqueue(st), op, at);
      } catch (const std::exception& e) {
        fail_collective(comm_, op, at, e.what());
      }
    }
    CUDA_CHECK(cudaEventRecord(done.get(), st));
    if (!direct) CUDA_CHECK(cudaStreamWaitEvent(cs, done.get(), 0));
    watch.arm(done);
    timings_.emplace_back(std::move(start), std::move(done));
    // Counted in batches (a query and an elapsed-time read per collective,
    // host calls the collective itself need not wait for); comm_seconds()
    // counts the rest.
    if (timings_.size() >= kTimingBatch) settle_timings(false);
  }

  static constexpr size_t kTimingBatch = 32;  // uncounted collectives before run() counts the done ones

  // Counts the time of the collectives that are done, in queue order; with
  // `wait`, of every one (a hung one ends the process by the watchdog).
  void settle_timings(bool wait) {
    while (!timings_.empty()) {
      const auto& [start, done] = timings_.front();
      if (wait) CUDA_CHECK(cudaEventSynchronize(done.get()));
      else if (!event_done(done.get())) break;
      float ms = 0;
      cudaEventElapsedTime(&ms, start.get(), done.get());
      comm_seconds_ += ms / 1e3;
      timings_.pop_front();
    }
  }

  ncclComm_t comm_;
  int device_;
  NcclMode mode_;
  std::vector<int> world_ranks_;
  std::string group_;  // world_ranks_ as "0,1,3", for the one-line error
  int rank_ = 0, size_ = 1;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;  // the caller's stream's work so far, waited for by stream_
  EventPool events_;             // (before timings_: their events go back to it)
  std::deque<std::pair<EventRef, EventRef>> timings_;  // (start, done) of collectives not yet counted
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& mpi, int device, double timeout_s,
                                                     NcclMode mode) {
  nccl_launch_order_default();  // (before NCCL's first call: the header says why)
  CUDA_CHECK(cudaSetDevice(device));
  ncclUniqueId id;
  if (mpi.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  static_assert(sizeof id % 4 == 0, "ncclUniqueId travels as 32-bit words");
  Tensor idt = Tensor::empty({static_cast<int64_t>(sizeof id / 4)}, DType::i32, host_ctx());
  std::memcpy(idt.raw(), &id, sizeof id);
  mpi.broadcast(idt, 0, Stream{}, "NCCL unique id");
  std::memcpy(&id, idt.raw(), sizeof id);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = mode == NcclMode::blocking ? 1 : 0;
  ncclComm_t comm = nullptr;
  const double deadline = now_s() + timeout_s;
  ncclResult_t r = ncclSuccess;
  if (mode == NcclMode::blocking) {
    // Returns once every rank has joined: a rank that never does would hang
    // it, so the watchdog holds the deadline (the one-line error, exit 1).
    const std::vector<int> world = mpi.world_ranks();
    const std::string group = ranks_str(world);  // (outlives the watch)
    Watch watch({0, nullptr, nullptr, deadline, "ncclCommInitRankConfig",
                 CallSite{world[mpi.rank()], "NCCL communicator set-up", timeout_s, &group, device}});
    r = ncclCommInitRankConfig(&comm, mpi.size(), id, mpi.rank(), &config);
  } else {
    r = ncclCommInitRankConfig(&comm, mpi.size(), id, mpi.rank(), &config);
  }
  // Polled in either mode: NCCL_COMM_BLOCKING=0 in the environment overrides
  // config.blocking, and then the blocking set-up returns in progress too.
  while (r == ncclInProgress) {
    if (now_s() > deadline) {
      ncclCommAbort(comm);
      throw BackendError("NCCL communicator set-up did not complete within " + std::to_string(timeout_s) + " s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (const ncclResult_t q = ncclCommGetAsyncError(comm, &r); q != ncclSuccess) r = q;
  }
  if (r != ncclSuccess) {
    // (aborted, not left: its proxy and bootstrap threads would outlive the
    // error and could hold up the process's exit)
    if (comm) ncclCommAbort(comm);
    throw BackendError(std::string("NCCL: ncclCommInitRankConfig: ") + ncclGetErrorString(r));
  }
  return std::make_unique<NcclCommunicator>(comm, device, mpi.world_ranks(), timeout_s, mode);
}

#endif

}  // namespace sy::comm
