// Communicator: the one interface for moving data between ranks, on tensors.
//
// Every collective has a timeout: one that has not completed within it ends
// the job with one line naming the collective, the caller's context (the
// layer) and the group's ranks, so a lost or stuck rank never turns into a
// silent hang (MpiCommunicator: a watchdog thread, see there).
//
// Tensors may be f32, bf16, i32, i64 or f64 (movement: any; sums: what the
// backend can add), on the host or a device; work is ordered on `stream`
// (NCCL) or done before the call returns (MPI, which stages device tensors
// through host memory, the copies ordered on `stream`: after the work queued
// there so far; their writers must be queued there or already done). all_to_all_v moves rows of
// dim 0: send_rows[r] consecutive rows go to rank r, in rank order (as the
// group-major MoE buffer lays them out), recv_rows[r] arrive from rank r;
// send and recv must not overlap (NCCL copies a rank's own rows before the
// others are sent, and MPI_Alltoallv forbids it).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace sy::comm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Ranks of this group, as ranks of the world.
  virtual std::vector<int> world_ranks() const = 0;
  // Sub-groups: ranks with the same color form one, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;

  // n = send.size() / size() host counts to every rank (the planning step
  // of an exchange: counts are host values).
  virtual void all_to_all_counts(const std::vector<int64_t>& send, std::vector<int64_t>& recv,
                                 const char* context) = 0;
  virtual void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_rows, Tensor& recv,
                            const std::vector<int64_t>& recv_rows, Stream stream, const char* context) = 0;
  // In place: every element summed over the group.
  virtual void all_reduce_sum(Tensor& t, Stream stream, const char* context) = 0;
  virtual void broadcast(Tensor& t, int root, Stream stream, const char* context) = 0;
  // In place over dim 0, uneven parts (an all-gather-v): t holds sum(rows)
  // rows, rank r's part the rows[r] rows after those of ranks below it; each
  // rank's part, as it holds it, reaches every rank's same rows. Here (the
  // fallback): each part broadcast from its rank in turn, in pieces of at
  // most 2^26 elements; the backends override it with one collective
  // (MPI_Allgatherv; NCCL's all-gather for equal parts, else one group of
  // broadcasts) where they can.
  virtual void all_gather_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context);
  // In place over dim 0, uneven parts (a reduce-scatter-v), the parts as
  // all_gather_v's: afterwards rank r's part holds the group's sum of that
  // part; the rest of t holds unspecified values. Here (the fallback): the
  // whole of t summed (all_reduce_sum, which keeps that promise); the
  // backends override it (MPI: a ring of MPI_Sendrecv; NCCL: its
  // reduce-scatter for equal parts, else one group of reduces).
  virtual void reduce_scatter_sum_v(Tensor& t, const std::vector<int64_t>& rows, Stream stream, const char* context);
  virtual void barrier(const char* context) = 0;

  // One host value summed over the group.
  double all_reduce_sum(double v, const char* context);
  // Whether another thread may run collectives on another communicator while
  // this one is in a collective (the overlapped gradient reduction needs it).
  virtual bool concurrent_collectives() const { return false; }
  // Whether collectives are queued in stream order and return without the
  // host waiting for them (NCCL): the caller's stream waits for each one,
  // so a collective queued on a second stream overlaps the first's work.
  virtual bool stream_ordered() const { return false; }
  // Host bytes kept for staging device tensors through the host (MPI: pinned
  // once and reused from one collective to the next; for metrics). 0 where
  // collectives read device memory themselves (NCCL) or nothing is staged.
  virtual size_t host_staging_bytes() const { return 0; }

  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double s) { timeout_s_ = s; }
  // Seconds spent inside collectives since the last reset (for metrics).
  // Stream-ordered collectives (NCCL) are timed by CUDA events and counted
  // in batches, by a later call, once done; settle_comm_seconds() counts
  // every one queued so far, waiting for those still in flight: call it
  // before reading comm_seconds() (where the host waits anyway). MPI counts
  // each collective as it returns: nothing to settle.
  double comm_seconds() const { return comm_seconds_; }
  virtual void settle_comm_seconds() {}
  void reset_comm_seconds() { comm_seconds_ = 0; }

 protected:
  double timeout_s_ = 300;
  double comm_seconds_ = 0;
};

namespace detail {
// For the communicators' watchdogs and timers: a monotonic clock in seconds,
// and a group's world ranks as "0,1,3" for the one-line timeout error.
double now_s();
std::string ranks_str(const std::vector<int>& ranks);
// all_to_all_v's send and recv share no byte (empty tensors never overlap);
// else one line naming the caller's context.
void check_disjoint(const Tensor& send, const Tensor& recv, const char* context);
// all_gather_v's (or reduce_scatter_sum_v's: op) parts against t (one per
// rank, none negative, together its dim 0), else one line naming the op
// and the caller's context; each part's first
// row, and their total last (size + 1 values).
std::vector<int64_t> check_parts(const Tensor& t, const std::vector<int64_t>& rows, int size, const char* op,
                                 const char* context);
}  // namespace detail

}  // namespace sy::comm
