#include "comm/mpi_communicator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>

// SY_LEAK_CHECK: built with AddressSanitizer (gcc says so by a macro,
// clang by a feature), whose LeakSanitizer MpiSession runs early.
#if defined(__SANITIZE_ADDRESS__)
#define SY_LEAK_CHECK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SY_LEAK_CHECK 1
#endif
#endif
#ifdef SY_LEAK_CHECK
#include <sanitizer/lsan_interface.h>
#endif

#include "core/context.h"
#include "core/device.h"

namespace sy::comm {

using detail::now_s;
using detail::ranks_str;

namespace {

// MPI takes int counts and displacements (prefix sums of the counts).
void to_mpi(const std::vector<int64_t>& counts, std::vector<int>& c, std::vector<int>& d) {
  c.resize(counts.size());
  d.resize(counts.size());
  int64_t acc = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    SY_CHECK(counts[i] >= 0 && counts[i] <= INT32_MAX && acc <= INT32_MAX,
             "count " << counts[i] << " at displacement " << acc << " outside MPI's int range");
    c[i] = static_cast<int>(counts[i]);
    d[i] = static_cast<int>(acc);
    acc += counts[i];
  }
}

// One per process: checks the deadline of each collective in flight, one per
// calling thread (the main thread's, and the gradient reducer's, which runs
// collectives on its own communicator while backward goes on). What it needs
// for its message is recorded as pointers and composed only if it fires, so
// arming costs a few atomic stores.
class Watchdog {
 public:
  struct Call {
    const char* op;
    const char* context;
    double timeout_s;
    int world_rank;
    const std::vector<int>* group;
  };
  static Watchdog& get() {
    static Watchdog* w = new Watchdog;  // never destroyed: its detached thread polls it to the end
    return *w;
  }
  void arm(double deadline, const Call& call) {
    Slot& s = slots_[slot()];
    s.op.store(call.op), s.context.store(call.context), s.timeout_s.store(call.timeout_s);
    s.world_rank.store(call.world_rank), s.group.store(call.group);
    s.deadline.store(deadline);
  }
  void disarm() { slots_[slot()].deadline.store(0); }

 private:
  static constexpr int kSlots = 8;
  // The call by value (op and context are the caller's long-lived strings,
  // group its communicator's), so that a call that ends as its deadline
  // passes leaves nothing dangling for the message.
  struct Slot {
    std::atomic<double> deadline{0};
    std::atomic<const char*> op{nullptr}, context{nullptr};
    std::atomic<double> timeout_s{0};
    std::atomic<int> world_rank{0};
    std::atomic<const std::vector<int>*> group{nullptr};
    std::atomic<bool> taken{false};
  };
  // This thread's slot: claimed on its first collective and given back when
  // the thread ends, so that a process making many threads over its life
  // (a thread-mode gradient reducer's worker per Trainer) does not run out;
  // only 8 threads running collectives at once do.
  int slot() {
    struct Claim {
      Watchdog* w = nullptr;
      int i = -1;
      ~Claim() {
        if (i < 0) return;
        w->slots_[i].deadline.store(0);
        w->slots_[i].taken.store(false);
      }
    };
    thread_local Claim mine;
    if (mine.i < 0) {
      for (int i = 0; i < kSlots && mine.i < 0; ++i) {
        bool free = false;
        if (slots_[i].taken.compare_exchange_strong(free, true)) mine.w = this, mine.i = i;
      }
      if (mine.i < 0) throw Error("MPI watchdog: more than 8 threads run collectives at once");
    }
    return mine.i;
  }
  Watchdog() {
    std::thread([this] {
      for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        for (Slot& s : slots_) {
          const double d = s.deadline.load();
          if (d <= 0 || now_s() <= d) continue;
          const Call c{s.op.load(), s.context.load(), s.timeout_s.load(), s.world_rank.load(), s.group.load()};
          // (A deadline changed meanwhile - the call ended, another began -
          // means the fields may be the next call's: not this one's to fire.)
          if (s.deadline.load() == d) fire(c);
        }
      }
    }).detach();
  }
  [[noreturn]] static void fire(const Call& c) {
    std::fprintf(stderr,
                 "error: rank %d: %s in '%s' did not complete within %g s (group of world ranks %s): "
                 "a rank is stuck or gone\n",
                 c.world_rank, c.op, c.context, c.timeout_s, ranks_str(*c.group).c_str());
    std::fflush(stderr);
    std::_Exit(1);
  }
  Slot slots_[kSlots];
};
}  // namespace

std::string mpi_error_string(int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(msg, len);
}

namespace {

// The MPI type that moves (or sums) one element of t.
MPI_Datatype mpi_type(DType t, bool sum, const char* context) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::bf16:
      if (sum) throw BackendError(std::string("all_reduce in '") + context + "': MPI cannot sum bf16 tensors");
      return MPI_UINT16_T;
  }
  return MPI_BYTE;
}

// Device tensors are staged through page-locked host memory (the
// communicator's caching allocator, core/pinned_allocator.h: blocks are
// pinned once and reused, so a collective neither allocates nor pins), the
// copies ordered on the caller's stream and waited for: the copy out after
// the work queued there so far, not after the whole device's (the tensor's
// writers are queued there or already done: the gradient reducer's thread
// waits for a bucket's event, then stages it on its own stream while
// backward's kernels go on); on no stream, after the whole device's
// (core/tensor.cc).
Ctx staging(Allocator& pinned, Stream stream) {
  Ctx c = host_ctx();
  c.alloc = &pinned;
  c.stream = stream;
  return c;
}
// t itself on the host, else its contents copied to a staging tensor.
Tensor on_host(const Tensor& t, const Ctx& stage) {
  if (t.device().is_cpu()) return t;
  Tensor h = Tensor::empty(t.shape(), t.dtype(), stage);
  h.copy_from(t, stage);
  return h;
}
// The collective's result h back into t (nothing when t is h, on the host).
void from_host(Tensor& t, const Tensor& h, const Ctx& stage) {
  if (!t.device().is_cpu()) t.copy_from(h, stage);
}

// Elements per row of dim 0.
int64_t row_elems(const Tensor& t) { return t.ndim() == 0 || t.dim(0) == 0 ? 0 : t.numel() / t.dim(0); }

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : pinned_(pinned_host_allocator()), comm_(comm) {
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  // Errors come back as codes (and become exceptions), not MPI's abort.
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  int wr = 0;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &wr));
  world_ranks_.resize(size_);
  MPI_CHECK(MPI_Allgather(&wr, 1, MPI_INT, world_ranks_.data(), 1, MPI_INT, comm_));
  one_node_ = node_local(comm_).size == size_;
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_WORLD && !finalized) MPI_Comm_free(&comm_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) const {
  MPI_Comm sub;
  MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
  auto c = std::make_unique<MpiCommunicator>(sub);
  c->set_timeout_s(timeout_s_);
  c->ring_min_bytes_ = ring_min_bytes_;
  return c;
}

template <typename F>
void MpiCommunicator::guarded(const char* op, const char* context, F&& call) {
  const Watchdog::Call desc{op, context, timeout_s_, world_ranks_[rank_], &world_ranks_};
  const double t0 = now_s();
  Watchdog::get().arm(t0 + timeout_s_, desc);
  const int rc = call();
  Watchdog::get().disarm();
  comm_seconds_ += now_s() - t0;
  if (rc != MPI_SUCCESS)
    throw BackendError(std::string("MPI: ") + op + " in '" + context + "': " + mpi_error_string(rc));
}

void MpiCommunicator::all_to_all_counts(const std::vector<int64_t>& send, std::vector<int64_t>& recv,
                                        const char* context) {
  SY_CHECK(!send.empty() && send.size() % size_ == 0,
           "all_to_all_counts in '" << context << "': " << send.size() << " counts for a group of " << size_);
  recv.assign(send.size(), 0);
  const int n = static_cast<int>(send.size() / size_);
  guarded("all_to_all", context,
          [&] { return MPI_Alltoall(send.data(), n, MPI_INT64_T, recv.data(), n, MPI_INT64_T, comm_); });
}

void MpiCommunicator::all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                                   const std::vector<int64_t>& recv_rows, Stream stream, const char* context) {
  SY_CHECK(static_cast<int>(send_rows.size()) == size_ && static_cast<int>(recv_rows.size()) == size_,
           "all_to_all_v in '" << context << "': " << send_rows.size() << " send and " << recv_rows.size()
                               << " recv counts for a group of " << size_);
  SY_CHECK(send.dtype() == recv.dtype(), "all_to_all_v in '" << context << "': " << dtype_name(send.dtype())
                                                             << " sent, " << dtype_name(recv.dtype()) << " received");
  int64_t ns = 0, nr = 0;
  for (int64_t r : send_rows) ns += r;
  for (int64_t r : recv_rows) nr += r;
  SY_CHECK(send.ndim() >= 1 && ns == send.dim(0) && recv.ndim() >= 1 && nr == recv.dim(0),
           "all_to_all_v in '" << context << "': " << ns << " rows to send from " << shape_str(send.shape()) << ", "
                               << nr << " to receive into " << shape_str(recv.shape()));
  detail::check_disjoint(send, recv, context);
  if (size_ == 1) {  // (the rows to itself: a copy, not staged through the host and back)
    recv.copy_from(send, staging(*pinned_, stream));
    return;
  }
  const int64_t w = std::max(row_elems(send), row_elems(recv));
  std::vector<int64_t> sc(size_), rc(size_);
  for (int i = 0; i < size_; ++i) sc[i] = send_rows[i] * w, rc[i] = recv_rows[i] * w;
  to_mpi(sc, scratch_[0], scratch_[1]);
  to_mpi(rc, scratch_[2], scratch_[3]);
  const MPI_Datatype type = mpi_type(send.dtype(), false, context);
  const Ctx stage = staging(*pinned_, stream);
  const Tensor hs = on_host(send, stage);
  Tensor hr = recv.device().is_cpu() ? recv : Tensor::empty(recv.shape(), recv.dtype(), stage);
  guarded("all_to_all_v", context, [&] {
    return MPI_Alltoallv(hs.raw(), scratch_[0].data(), scratch_[1].data(), type, hr.raw(), scratch_[2].data(),
                         scratch_[3].data(), type, comm_);
  });
  from_host(recv, hr, stage);
}

void MpiCommunicator::all_reduce_sum(Tensor& t, Stream stream, const char* context) {
  const MPI_Datatype type = mpi_type(t.dtype(), true, context);
  if (size_ == 1) return;  // (the sum over one rank: t itself; a group of one, e.g. expert replicas when ep = world)
  if (t.numel() > max_piece_) {
    // Past MPI's int counts (a model's expert gradients past 2^31 - 1
    // elements, one arena): in pieces, in order, on every rank alike.
    Tensor flat = t.reshape({t.numel()});
    for (int64_t at = 0; at < t.numel(); at += max_piece_) {
      Tensor piece = flat.rows(at, std::min(t.numel(), at + max_piece_));
      all_reduce_sum(piece, stream, context);
    }
    return;
  }
  const Ctx stage = staging(*pinned_, stream);
  Tensor h = on_host(t, stage);
  if (!ring_all_reduce(static_cast<int64_t>(t.nbytes()))) {
    guarded("all_reduce", context,
            [&] { return MPI_Allreduce(MPI_IN_PLACE, h.raw(), static_cast<int>(t.numel()), type, MPI_SUM, comm_); });
    return from_host(t, h, stage);
  }
  // The ring reduce-scatter over equal parts (multiples of 16 elements, the
  // last ones shorter), then each part from its rank to all: each rank sends
  // 2 (N - 1)/N of t, as a ring all-reduce does, and every element is summed
  // once, in one fixed order, by its part's rank (so every rank gets the
  // same bits).
  const int64_t n = t.numel(), part = (n + 16 * size_ - 1) / (16 * size_) * 16;
  std::vector<int64_t> first(size_), count(size_);
  for (int p = 0; p < size_; ++p) {
    first[p] = std::min(n, p * part);
    count[p] = std::min(n, first[p] + part) - first[p];
  }
  reserve_ring(part, dtype_size(t.dtype()));
  to_mpi(count, scratch_[0], scratch_[1]);
  char* base = static_cast<char*>(h.raw());
  guarded("all_reduce", context, [&] {
    const int code = ring_reduce_scatter(base, first, count, t.dtype(), type);
    if (code != MPI_SUCCESS) return code;
    return MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base, scratch_[0].data(), scratch_[1].data(), type,
                          comm_);
  });
  from_host(t, h, stage);
}

void MpiCommunicator::broadcast(Tensor& t, int root, Stream stream, const char* context) {
  SY_CHECK(t.nbytes() <= INT32_MAX, "broadcast in '" << context << "': " << t.nbytes() << " bytes");
  SY_CHECK(root >= 0 && root < size_, "broadcast in '" << context << "': root " << root << " in a group of " << size_);
  if (size_ == 1) return;
  const Ctx stage = staging(*pinned_, stream);
  Tensor h = on_host(t, stage);
  guarded("broadcast", context,
          [&] { return MPI_Bcast(h.raw(), static_cast<int>(t.nbytes()), MPI_BYTE, root, comm_); });
  from_host(t, h, stage);
}

void MpiCommunicator::all_gather_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context) {
  detail::check_parts(t, rows, size_, "all_gather_v", context);
  if (size_ == 1) return;
  if (t.numel() > INT32_MAX) return Communicator::all_gather_v(t, rows, stream, context);
  const int64_t w = row_elems(t);
  std::vector<int64_t> counts(size_);
  for (int r = 0; r < size_; ++r) counts[r] = rows[r] * w;
  to_mpi(counts, scratch_[0], scratch_[1]);
  const MPI_Datatype type = mpi_type(t.dtype(), false, context);
  const Ctx stage = staging(*pinned_, stream);
  Tensor h = on_host(t, stage);
  guarded("all_gather_v", context, [&] {
    return MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, h.raw(), scratch_[0].data(), scratch_[1].data(), type,
                          comm_);
  });
  from_host(t, h, stage);
}

namespace {
// dst[i] += src[i] for n elements of dtype d (the addable ones).
void add_into(void* dst, const void* src, int64_t n, DType d) {
  auto add = [&](auto* x, const auto* y) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
  };
  switch (d) {
    case DType::f32: return add(static_cast<float*>(dst), static_cast<const float*>(src));
    case DType::f64: return add(static_cast<double*>(dst), static_cast<const double*>(src));
    case DType::i32: return add(static_cast<int32_t*>(dst), static_cast<const int32_t*>(src));
    case DType::i64: return add(static_cast<int64_t*>(dst), static_cast<const int64_t*>(src));
    case DType::bf16: break;  // (refused by mpi_type before)
  }
}
}  // namespace

void MpiCommunicator::reserve_ring(int64_t largest_elems, size_t esize) {
  const int64_t piece = std::min(largest_elems, kRingPiece);
  if (ring_.size() < static_cast<size_t>(piece) * esize) ring_.resize(piece * esize);
}

// A ring (N - 1 steps): at step s a rank sends its running sum of part
// (rank - s - 1) mod N to the next rank and adds the previous rank's of part
// (rank - s - 2) mod N into its own, so after the last step it holds the
// whole sum of its own part. Each rank sends (N - 1)/N of the parts, half an
// all-reduce's traffic; every part's sum is made in one fixed order. (OpenMPI
// 4.1's MPI_Reduce_scatter took 2.1x MPI_Allreduce's time at 136 MB on 2
// ranks of this machine, this ring 0.35x:
// docs/experiments/mpi-reduce-scatter.md.) Parts move in pieces of at most
// kRingPiece elements (MPI's counts are int). Every rank makes the same
// number of calls a step, empty ones included, set by the largest part: a
// call's send is matched by the next rank's receive of the same piece.
// (A rank that skipped a step with nothing to send or receive left its
// neighbours' next messages matched to the wrong calls.)
int MpiCommunicator::ring_reduce_scatter(char* base, const std::vector<int64_t>& first,
                                         const std::vector<int64_t>& count, DType d, MPI_Datatype type) {
  const size_t esize = dtype_size(d);
  const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
  const int64_t largest = *std::max_element(count.begin(), count.end());
  for (int s = 0; s < size_ - 1; ++s) {
    const int sp = ((rank_ - s - 1) % size_ + size_) % size_, rp = ((rank_ - s - 2) % size_ + size_) % size_;
    const int64_t sn = count[sp], rn = count[rp];
    for (int64_t at = 0; at == 0 || at < largest; at += kRingPiece) {
      const int64_t sc = std::clamp<int64_t>(sn - at, 0, kRingPiece), rc = std::clamp<int64_t>(rn - at, 0, kRingPiece);
      const int code = MPI_Sendrecv(base + (first[sp] + at) * esize, static_cast<int>(sc), type, next, 0, ring_.data(),
                                    static_cast<int>(rc), type, prev, 0, comm_, MPI_STATUS_IGNORE);
      if (code != MPI_SUCCESS) return code;
      add_into(base + (first[rp] + at) * esize, ring_.data(), rc, d);
    }
  }
  return MPI_SUCCESS;
}

void MpiCommunicator::reduce_scatter_sum_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream,
                                           const char* context) {
  const std::vector<int64_t> first_row = detail::check_parts(t, rows, size_, "reduce_scatter_sum_v", context);
  const MPI_Datatype type = mpi_type(t.dtype(), true, context);
  if (size_ == 1) return;
  const int64_t w = row_elems(t);
  std::vector<int64_t> first(size_), count(size_);
  for (int p = 0; p < size_; ++p) first[p] = first_row[p] * w, count[p] = rows[p] * w;
  const Ctx stage = staging(*pinned_, stream);
  Tensor h = on_host(t, stage);
  reserve_ring(*std::max_element(count.begin(), count.end()), dtype_size(t.dtype()));
  guarded("reduce_scatter", context,
          [&] { return ring_reduce_scatter(static_cast<char*>(h.raw()), first, count, t.dtype(), type); });
  if (rows[rank_] == 0 || t.device().is_cpu()) return;
  Tensor mine = t.rows(first_row[rank_], first_row[rank_] + rows[rank_]);
  mine.copy_from(h.rows(first_row[rank_], first_row[rank_] + rows[rank_]), stage);
}

void MpiCommunicator::barrier(const char* context) {
  guarded("barrier", context, [&] { return MPI_Barrier(comm_); });
}

size_t MpiCommunicator::host_staging_bytes() const { return pinned_->reserved() + ring_.capacity(); }

bool MpiCommunicator::concurrent_collectives() const { return MpiSession::thread_multiple(); }

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  // MULTIPLE: the gradient reducer's thread runs collectives (on its own
  // communicator) while the main thread's backward runs the expert exchange.
#ifdef SY_LEAK_CHECK
  // What MPI_Init leaks belongs to OpenMPI (some of it from components it
  // loads, tries and unloads at once, whose frames no suppression can name):
  // this thread's allocations until the constructor returns are not leaks to
  // report.
  struct Unchecked {
    Unchecked() { __lsan_disable(); }
    ~Unchecked() { __lsan_enable(); }
  } unchecked;
#endif
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  thread_multiple_ = provided >= MPI_THREAD_MULTIPLE;
}

MpiSession::~MpiSession() {
#ifdef SY_LEAK_CHECK
  // Under LeakSanitizer (scripts/ci_sanitize.sh) the leak check runs here,
  // once, instead of at exit: every object of the program's own is gone by
  // now (the session outlives them), while OpenMPI's allocations are still
  // reachable. At exit, after MPI_Finalize, OpenMPI's unfreed blocks would
  // be reported from components it has unloaded, stacks no suppression can
  // name without the slow DWARF unwinder on every allocation.
  __lsan_do_leak_check();
#endif
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

NodeLocal node_local(MPI_Comm comm) {
  MPI_Comm node;
  MPI_CHECK(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  NodeLocal n;
  MPI_Comm_rank(node, &n.rank);
  MPI_Comm_size(node, &n.size);
  MPI_Comm_free(&node);
  return n;
}

int node_local_gpu(MPI_Comm comm) {
  return cuda_device_count() > 0 ? node_rank_gpu(node_local(comm).rank) : -1;
}

void abort_job(int code) { MPI_Abort(MPI_COMM_WORLD, code); std::abort(); }

}  // namespace sy::comm
