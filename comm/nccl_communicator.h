// NcclCommunicator: Communicator over NCCL, for device tensors on GPUs.
//
//   created from an MPI communicator: rank 0's ncclUniqueId is broadcast over
//   MPI, then ncclCommInitRankConfig (non-blocking); split() is ncclCommSplit
//   (expert-parallel and replica groups)
//   all_to_all_v: grouped ncclSend/ncclRecv (NCCL has no all-to-all-v)
//   all_reduce_sum, broadcast: ncclAllReduce, ncclBroadcast in place
//
// Every collective runs on the communicator's own stream, ordered after the
// caller's stream (an event) and before the caller's later work (another
// event), with CUDA events around it for the time spent (comm_seconds()).
// The communicator is non-blocking: the call that enqueues a collective polls
// it out of ncclInProgress for at most the timeout, then a watchdog thread
// polls its completion event and ncclCommGetAsyncError (never while another
// thread is inside NCCL: one mutex guards every call into it), and past the
// timeout (or on an asynchronous error) prints the same one-line error as the MPI path
// ("error: rank R: <op> in '<context>' did not complete within T s (group of
// world ranks ...)"), calls ncclCommAbort so no kernel spins forever, and
// exits the process with status 1, which makes mpirun end the job.
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

// One NCCL communicator per rank of `mpi` on CUDA device `device`.
std::unique_ptr<Communicator> make_nccl_communicator(MpiCommunicator& mpi, int device, double timeout_s);

}  // namespace sy::comm
