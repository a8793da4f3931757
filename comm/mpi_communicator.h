// MpiCommunicator: Communicator over an MPI communicator, with MPI's own
// blocking collectives (MPI_Alltoallv, MPI_Allreduce, ...: their tuned
// algorithms; the non-blocking ones cost ~40% more at small sizes here),
// except for sums: the reduce-scatter is a ring of our own, and so is a
// large all-reduce on one node (OpenMPI 4.1's cost more than twice as
// much here: docs/experiments/mpi-reduce-scatter.md, mpi-ring-all-reduce.md).
// The timeout is kept by a per-process watchdog thread: a collective still
// in flight at its deadline gets one line on stderr ("error: rank R: <op> in
// '<layer>' did not complete within T s ... world ranks ...") and the process
// exits with status 1, which makes mpirun end the whole job. A blocked MPI
// call cannot be interrupted to throw, which is why this one path exits
// rather than throwing. Device tensors are staged through page-locked host
// memory, pinned once per size class and reused (core/pinned_allocator.h;
// ordinary memory where the system will not pin more), so several ranks
// can share one GPU (NCCL refuses that); the copies are ordered on the
// caller's stream (on none: after the whole device's work). A group of one
// stages nothing: its collectives move nothing between ranks.
#pragma once
#include <mpi.h>

#include <memory>

#include "comm/communicator.h"
#include "core/pinned_allocator.h"

namespace sy::comm {

// MPI's own error string for a return code.
std::string mpi_error_string(int code);
// MPI_CHECK: the MPI member of the check-macro family (core/error.h).
#define MPI_CHECK(expr) SY_CHECK_CALL("MPI", expr, MPI_SUCCESS, ::sy::comm::mpi_error_string)

class MpiCommunicator : public Communicator {
 public:
  // Wraps (and owns, unless it is MPI_COMM_WORLD) `comm`.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::vector<int> world_ranks() const override { return world_ranks_; }
  std::unique_ptr<Communicator> split(int color, int key) const override;
  void all_to_all_counts(const std::vector<int64_t>& send, std::vector<int64_t>& recv,
                         const char* context) override;
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                    const std::vector<int64_t>& recv_rows, Stream stream, const char* context) override;
  // MPI_Allreduce; or, where every rank of the group is on one node and t
  // holds at least kRingMinBytes, a ring: the reduce-scatter below over
  // t split in equal parts, then MPI_Allgatherv (see there for why).
  void all_reduce_sum(Tensor& t, Stream stream, const char* context) override;
  static constexpr int64_t kRingMinBytes = int64_t{1} << 20;
  // on false: MPI_Allreduce for every sum (parallel.mpi_ring_all_reduce);
  // min_bytes: the smallest sum the ring takes (bench_comm --all-reduce
  // times it below kRingMinBytes). Kept by split()'s children.
  void set_ring_all_reduce(bool on, int64_t min_bytes = kRingMinBytes) {
    ring_min_bytes_ = on ? min_bytes : INT64_MAX;
  }
  // The most elements one reduction takes (MPI's counts are ints): a longer
  // tensor is summed in pieces of this many, one after another (each piece
  // as a tensor of its own; every rank the same bits). Tests lower it.
  void set_max_piece_elements(int64_t n) { max_piece_ = n; }
  // Whether a sum of `bytes` takes the ring.
  bool ring_all_reduce(int64_t bytes) const { return one_node_ && size_ > 1 && bytes >= ring_min_bytes_; }
  void broadcast(Tensor& t, int root, Stream stream, const char* context) override;
  // MPI_Allgatherv in place (each part counted in elements: MPI's int
  // counts and displacements; a tensor of more than 2^31 - 1 elements takes
  // the base class's broadcasts in pieces).
  void all_gather_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context) override;
  // A ring of MPI_Sendrecv (N - 1 steps), each rank adding what arrives
  // into its part (see there for why not MPI_Reduce_scatter); a device
  // tensor gets back its own part only.
  void reduce_scatter_sum_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context) override;
  void barrier(const char* context) override;
  using Communicator::all_reduce_sum;
  MPI_Comm handle() const { return comm_; }
  // (page-locked, but for any block the system would not pin; and the
  // reduce-scatter's buffer for the part arriving)
  size_t host_staging_bytes() const override;
  bool concurrent_collectives() const override;

 private:
  // Runs one blocking collective under the watchdog's deadline.
  template <typename F>
  void guarded(const char* op, const char* context, F&& call);
  static constexpr int64_t kRingPiece = int64_t{1} << 30;  // elements a ring message moves at most
  // The ring's buffer for the largest part arriving (before the watchdog is
  // armed: it may throw).
  void reserve_ring(int64_t largest_elems, size_t esize);
  // The ring reduce-scatter over the element ranges [first[p], first[p] +
  // count[p]) of base (part p ends up summed on rank p); an MPI code.
  int ring_reduce_scatter(char* base, const std::vector<int64_t>& first, const std::vector<int64_t>& count, DType d,
                          MPI_Datatype type);
  mutable std::vector<int> scratch_[4];  // MPI's int counts/displacements, reused
  std::vector<char> ring_;               // the ring's part arriving, reused
  std::unique_ptr<CachingHostAllocator> pinned_;  // page-locked host blocks for device tensors
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  bool one_node_ = false;  // every rank of comm_ on this node (shared memory)
  int64_t ring_min_bytes_ = kRingMinBytes;  // the smallest sum the ring takes (INT64_MAX: none)
  int64_t max_piece_ = INT32_MAX;  // set_max_piece_elements
  std::vector<int> world_ranks_;
};

// RAII for MPI_Init_thread / MPI_Finalize.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  // Whether collectives may be called from several threads at once (the
  // overlapped gradient reduction needs it; without it, it runs after backward).
  static bool thread_multiple() { return thread_multiple_; }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  static inline bool thread_multiple_ = false;
};

// This rank's place among the ranks of `comm` on its own node (shared
// memory): which GPU it takes, and whether every rank has one to itself.
struct NodeLocal {
  int rank = 0, size = 1;
};
NodeLocal node_local(MPI_Comm comm);
// This rank's GPU: its node-local rank modulo the node's GPUs; -1 without one.
int node_local_gpu(MPI_Comm comm);

// Ends every rank of the job: what a rank's top-level handler calls after
// printing its error, so that no other rank waits forever.
[[noreturn]] void abort_job(int code);

}  // namespace sy::comm
