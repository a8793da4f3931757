// NcclCommunicator: Communicator over NCCL, for device tensors on GPUs.
//
//   created from an MPI communicator: rank 0's ncclUniqueId is broadcast over
//   MPI, then ncclCommInitRankConfig; split() is ncclCommSplit
//   (expert-parallel and replica groups)
//   all_to_all_v: grouped ncclSend/ncclRecv (NCCL has no all-to-all-v)
//   all_reduce_sum, broadcast: ncclAllReduce, ncclBroadcast in place
//
// A collective on device tensors runs on the caller's stream itself (as a
// user calls ncclAlltoAll: stream-ordered with the caller's work), with CUDA
// events around it for the time spent (comm_seconds()); the events are
// pooled and reused, not made anew for each call. Host tensors (staged) and
// the legacy stream's callers go through the communicator's own stream,
// ordered after the caller's stream and before its later work by two more
// events. (Until 2026-12-04 every call took that hop: two records and two
// stream waits a call, host time beside ncclAlltoAll's 5-7 us at 1-16 MiB.)
//
// Blocking by default (NcclMode::blocking, ncclConfig_t::blocking = 1; so is
// PyTorch's ProcessGroupNCCL): a non-blocking communicator's ncclGroupEnd
// (every collective ends in one) returns ncclInProgress and runs the group's
// launch on a thread it creates for the purpose (NCCL 2.23 on), host time a
// blocking one does not pay. On an H200 at 1 rank, bench_comm --nccl timed
// our all_to_all_v, non-blocking, at 45.7, 48.2, 54.4, 57.7 and 160.4 us at
// 1, 4, 16, 64 and 256 MiB, against ncclAlltoAll on a blocking communicator
// over the same buffers at 6.1, 6.3, 6.8, 34.8 and 129.0 us. NcclMode::
// nonblocking remains for those who want NCCL's own asynchronous error path:
// each call is polled out of ncclInProgress for at most the timeout.
//
// Timeouts: a watchdog thread holds every call from before it enters NCCL (a
// blocking call can hang on the host: a peer that never joins the connection
// set-up, a split or creation that a member never joins) to its completion
// event, and polls ncclCommGetAsyncError (never while another thread is
// inside NCCL: one mutex guards every call into it, and the watchdog only
// tries it). Past the timeout (or on an asynchronous error) it prints the
// same one-line error as the MPI path ("error: rank R: <op> in '<context>'
// did not complete within T s (group of world ranks ...)"), calls
// ncclCommAbort so no kernel spins forever (on a thread of its own, waited
// for a few seconds at most: the abort may wait for a thread stuck inside
// NCCL), and exits the process with status 1, which makes mpirun end the
// job. An error NCCL returns while a collective is enqueued ends it the same
// way ("... failed: <the error> ..."), not by a throw: part of a group may be
// queued already, and nothing could wait for it safely.
//
// Host tensors are staged through device memory (NCCL moves device memory
// only). NCCL cannot put two ranks on one GPU ("Duplicate GPU detected"):
// several ranks on one GPU use MpiCommunicator, which stages device tensors
// through the host. CUDA builds with NCCL only (SY_WITH_NCCL).
#pragma once
#include <memory>

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"

namespace sy::comm {

// The NCCL error string (NCCL_CHECK, the NCCL member of the check-macro family).
std::string nccl_error_string(int code);
#define NCCL_CHECK(expr) SY_CHECK_CALL("NCCL", static_cast<int>(expr), 0, ::sy::comm::nccl_error_string)

// True where the binary was built with NCCL.
bool nccl_available();

// How calls into NCCL return on a communicator (ncclConfig_t::blocking);
// its split() children take the same.
enum class NcclMode {
  blocking,     // once enqueued, or with an error (the default: see above)
  nonblocking,  // at once, ncclInProgress until NCCL's own thread is done; polled here
};

// NCCL_LAUNCH_ORDER_IMPLICIT=1 unless the environment sets it already (what
// make_nccl_communicator does first; true where it set it). A rank holds
// several communicators on one device (the world, the gradient buckets',
// the expert-parallel groups'), and in the gradient reducer's stream mode
// a bucket's all-reduce on the side stream can be in flight while an expert
// all-to-all runs on the compute stream. Without an order between them, a
// GPU that runs one rank's two kernels in the other order than a peer's can
// deadlock (each waits for a peer stuck behind the other): NCCL's user
// guide, "Using multiple NCCL communicators concurrently". From NCCL 2.26
// the variable orders the launches of every communicator on a device as the
// host issued them, which is one program order on every rank here (one
// thread calls NCCL, in the same order everywhere); on CUDA 12.3+ a launch
// waits only for the one before it to have started (a launch-completion
// event), so the two still overlap each other and the compute. NCCL reads
// it once, at its first launch; older NCCLs ignore it.
bool nccl_launch_order_default();

// One NCCL communicator per rank of `mpi` on CUDA device `device`.
std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& mpi, int device, double timeout_s,
                                                     NcclMode mode = NcclMode::blocking);

}  // namespace sy::comm
