#include "comm/mpi_communicator.h"

#include <chrono>
#include <cstring>
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

std::vector<int> displacements(const std::vector<int64_t>& counts) {
  std::vector<int> d(counts.size(), 0);
  int64_t acc = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    SY_CHECK(acc <= INT32_MAX, "all_to_all_v displacement " << acc << " exceeds MPI's int range");
    d[i] = static_cast<int>(acc);
    acc += counts[i];
  }
  return d;
}

std::vector<int> to_int(const std::vector<int64_t>& v) {
  std::vector<int> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    SY_CHECK(v[i] >= 0 && v[i] <= INT32_MAX, "all_to_all_v count " << v[i] << " outside MPI's int range");
    out[i] = static_cast<int>(v[i]);
  }
  return out;
}
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

void MpiCommunicator::wait(MPI_Request& req, const char* op, const char* context) {
  const double t0 = now_s(), deadline = t0 + timeout_s_;
  int done = 0;
  for (int spins = 0;; ++spins) {
    MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) break;
    if (now_s() > deadline) {
      std::ostringstream os;
      os << op << " in '" << context << "' did not complete within " << timeout_s_
         << " s on world rank " << world_ranks_[rank_] << " (group of world ranks "
         << ranks_str(world_ranks_) << "): a rank is stuck or gone";
      throw CommTimeout(os.str());
    }
    // Spin briefly (latency), then yield (oversubscribed ranks share cores).
    if (spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  comm_seconds_ += now_s() - t0;
}

void MpiCommunicator::all_to_all(const int64_t* send, int64_t* recv, int64_t n, const char* context) {
  MPI_Request req;
  MPI_CHECK(MPI_Ialltoall(send, static_cast<int>(n), MPI_INT64_T, recv, static_cast<int>(n), MPI_INT64_T,
                          comm_, &req));
  wait(req, "all_to_all", context);
}

void MpiCommunicator::all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                                   const std::vector<int64_t>& recv_counts, const char* context) {
  SY_CHECK(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
           "all_to_all_v in '" << context << "': " << send_counts.size() << " send and " << recv_counts.size()
                               << " recv counts for a group of " << size_);
  const std::vector<int> sc = to_int(send_counts), rc = to_int(recv_counts);
  const std::vector<int> sd = displacements(send_counts), rd = displacements(recv_counts);
  MPI_Request req;
  MPI_CHECK(MPI_Ialltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT,
                           comm_, &req));
  wait(req, "all_to_all_v", context);
}

void MpiCommunicator::all_reduce_sum(float* data, int64_t n, const char* context) {
  MPI_Request req;
  MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, comm_, &req));
  wait(req, "all_reduce", context);
}

void MpiCommunicator::all_reduce_sum(double* data, int64_t n, const char* context) {
  MPI_Request req;
  MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, comm_, &req));
  wait(req, "all_reduce", context);
}

void MpiCommunicator::broadcast(void* data, int64_t bytes, int root, const char* context) {
  MPI_Request req;
  MPI_CHECK(MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_, &req));
  wait(req, "broadcast", context);
}

void MpiCommunicator::barrier(const char* context) {
  MPI_Request req;
  MPI_CHECK(MPI_Ibarrier(comm_, &req));
  wait(req, "barrier", context);
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
