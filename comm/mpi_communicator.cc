#include "comm/mpi_communicator.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <sstream>
#include <thread>

namespace sy::comm {

namespace {
double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

std::string ranks_str(const std::vector<int>& r) {
  std::ostringstream os;
  for (size_t i = 0; i < r.size(); ++i) os << (i ? "," : "") << r[i];
  return os.str();
}

// MPI takes int counts and displacements (prefix sums of the counts).
void to_mpi(const std::vector<int64_t>& counts, std::vector<int>& c, std::vector<int>& d) {
  c.resize(counts.size());
  d.resize(counts.size());
  int64_t acc = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    SY_CHECK(counts[i] >= 0 && counts[i] <= INT32_MAX && acc <= INT32_MAX,
             "all_to_all_v count " << counts[i] << " at displacement " << acc << " outside MPI's int range");
    c[i] = static_cast<int>(counts[i]);
    d[i] = static_cast<int>(acc);
    acc += counts[i];
  }
}

// One per process: checks the deadline of the collective in flight (at most
// one: MPI calls come from the main thread only). What it needs for its
// message is recorded as pointers and composed only if it fires, so arming
// costs a few atomic stores.
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
    static Watchdog w;
    return w;
  }
  void arm(double deadline, const Call* call) {
    call_.store(call);
    deadline_.store(deadline);
  }
  void disarm() { deadline_.store(0); }

 private:
  Watchdog() {
    std::thread([this] {
      for (;;) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        const double d = deadline_.load();
        if (d > 0 && now_s() > d) fire(*call_.load());
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
  std::atomic<double> deadline_{0};
  std::atomic<const Call*> call_{nullptr};
};
}  // namespace

void mpi_check(int code, const char* expr, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, msg, &len);
  std::ostringstream os;
  os << file << ":" << line << ": " << expr << ": " << std::string(msg, len);
  throw BackendError(os.str());
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) : comm_(comm) {
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  // Errors come back as codes (and become exceptions), not MPI's abort.
  MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  int wr = 0;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &wr));
  world_ranks_.resize(size_);
  MPI_CHECK(MPI_Allgather(&wr, 1, MPI_INT, world_ranks_.data(), 1, MPI_INT, comm_));
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
  return c;
}

template <typename F>
void MpiCommunicator::guarded(const char* op, const char* context, F&& call) {
  const Watchdog::Call desc{op, context, timeout_s_, world_ranks_[rank_], &world_ranks_};
  const double t0 = now_s();
  Watchdog::get().arm(t0 + timeout_s_, &desc);
  const int rc = call();
  Watchdog::get().disarm();
  comm_seconds_ += now_s() - t0;
  mpi_check(rc, op, __FILE__, __LINE__);
}

void MpiCommunicator::all_to_all(const int64_t* send, int64_t* recv, int64_t n, const char* context) {
  guarded("all_to_all", context, [&] {
    return MPI_Alltoall(send, static_cast<int>(n), MPI_INT64_T, recv, static_cast<int>(n), MPI_INT64_T, comm_);
  });
}

void MpiCommunicator::all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                                   const std::vector<int64_t>& recv_counts, const char* context) {
  SY_CHECK(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
           "all_to_all_v in '" << context << "': " << send_counts.size() << " send and " << recv_counts.size()
                               << " recv counts for a group of " << size_);
  to_mpi(send_counts, scratch_[0], scratch_[1]);
  to_mpi(recv_counts, scratch_[2], scratch_[3]);
  guarded("all_to_all_v", context, [&] {
    return MPI_Alltoallv(send, scratch_[0].data(), scratch_[1].data(), MPI_FLOAT, recv, scratch_[2].data(),
                         scratch_[3].data(), MPI_FLOAT, comm_);
  });
}

void MpiCommunicator::all_reduce_sum(float* data, int64_t n, const char* context) {
  guarded("all_reduce", context,
          [&] { return MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_); });
}

void MpiCommunicator::all_reduce_sum(double* data, int64_t n, const char* context) {
  guarded("all_reduce", context,
          [&] { return MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_); });
}

void MpiCommunicator::broadcast(void* data, int64_t bytes, int root, const char* context) {
  guarded("broadcast", context,
          [&] { return MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_); });
}

void MpiCommunicator::barrier(const char* context) {
  guarded("barrier", context, [&] { return MPI_Barrier(comm_); });
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void abort_job(int code) { MPI_Abort(MPI_COMM_WORLD, code); std::abort(); }

}  // namespace sy::comm
