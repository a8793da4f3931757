// bench_comm --nccl: our NCCL all_to_all_v (NcclCommunicator: grouped
// ncclSend/ncclRecv on device buffers, its own stream, events, watchdog)
// (and over a non-blocking communicator, the mode it had before) beside
// ncclAlltoAll, the collective a user would call instead, on the same
// device buffers and ranks (issue 19's bar: ours within 80% of it), at 1 to
// 256 MiB sent per rank. Each row also counts the elements either left wrong
// (tagged payloads, receive buffers poisoned first).
#pragma once
#include <nlohmann/json.hpp>

#include "comm/mpi_communicator.h"

namespace sy::bench {

struct NcclBenchOptions {
  int iters = 20;            // timed back-to-back calls a size (nccl-tests' recipe: their mean)
  int64_t max_bytes = 256 << 20;  // the largest size a rank sends in total
};

// Rows (rank 0 prints the table): ranks, bytes_per_rank, ours_s, nccl_s, busbw
// of both, ratio = nccl_s / ours_s, wrong_ours, wrong_nccl (the ncclAlltoAll
// columns only with NCCL >= 2.28), and ours_nonblocking_s,
// wrong_ours_nonblocking: the same collective over a non-blocking
// communicator (NcclMode::nonblocking; the #wrong_ours column counts both). Throws ConfigError in a build without
// NCCL, BackendError without a GPU or when ours left any element wrong
// (after the whole table).
nlohmann::json bench_nccl_all_to_all(comm::MpiCommunicator& mpi, const NcclBenchOptions& opt);

}  // namespace sy::bench
