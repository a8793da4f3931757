#include "examples/bench_comm_nccl.h"

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include "core/device_runtime.h"
#include "core/error.h"

#ifdef SY_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include "comm/nccl_communicator.h"
#include "core/cuda_check.h"
#endif

namespace sy::bench {

#ifndef SY_WITH_NCCL

nlohmann::json bench_nccl_all_to_all(comm::MpiCommunicator&, const NcclBenchOptions&) {
  throw ConfigError("bench_comm --nccl: this binary was built without NCCL (a CUDA build finds it beside the "
                    "toolkit or under NCCL_HOME)");
}

#else

// ncclAlltoAll came with NCCL 2.28; against an older header only our column is measured.
#define SY_HAVE_NCCL_ALLTOALL (NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0))

namespace {

// The peer: a plain blocking NCCL communicator over the same ranks (RAII).
class PlainNccl {
 public:
  explicit PlainNccl(comm::MpiCommunicator& mpi) {
    ncclUniqueId id;
    if (mpi.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    NCCL_CHECK(ncclCommInitRank(&comm_, mpi.size(), id, mpi.rank()));
  }
  ~PlainNccl() { ncclCommDestroy(comm_); }
  PlainNccl(const PlainNccl&) = delete;
  PlainNccl& operator=(const PlainNccl&) = delete;
  ncclComm_t get() const { return comm_; }

 private:
  ncclComm_t comm_ = nullptr;
};

// What rank `from` sends to rank `to` as element i of that block: exact in
// int32 and different for every (sender, receiver, position mod 2^16).
int32_t tag(int from, int to, int64_t i) { return (from << 24) | (to << 16) | static_cast<int32_t>(i & 0xffff); }

}  // namespace

nlohmann::json bench_nccl_all_to_all(comm::MpiCommunicator& mpi, const NcclBenchOptions& opt) {
  const int device = comm::node_local_gpu(MPI_COMM_WORLD);
  if (device < 0) throw BackendError("bench_comm --nccl: no CUDA device");
  const int W = mpi.size(), R = mpi.rank();
  std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(device);
  Ctx& ctx = rt->ctx();
  const auto stream = static_cast<cudaStream_t>(ctx.stream.handle);
  std::unique_ptr<comm::Communicator> ours = comm::make_nccl_communicator(mpi, device, 120);
  // The same over a non-blocking communicator (the mode blocking replaced as
  // the default: comm/nccl_communicator.h), so one run shows what it cost.
  std::unique_ptr<comm::Communicator> ours_nb =
      comm::make_nccl_communicator(mpi, device, 120, comm::NcclMode::nonblocking);
  PlainNccl peer(mpi);

  nlohmann::json rows = nlohmann::json::array();
  int64_t wrong_total = 0;
  if (R == 0)
    std::printf("%12s %10s %10s %10s %12s %12s %9s %11s %11s\n", "bytes/rank", "ours_us", "ours_nb_us", "nccl_us",
                "ours_busbw", "nccl_busbw", "ours/nccl", "#wrong_ours", "#wrong_nccl");
  for (int64_t bytes = int64_t{1} << 20; bytes <= opt.max_bytes; bytes <<= 2) {
    const int64_t per_peer = std::max<int64_t>(1, bytes / 4 / W);  // int32 elements to each rank
    std::vector<int32_t> host(per_peer * W);
    for (int to = 0; to < W; ++to)
      for (int64_t i = 0; i < per_peer; ++i) host[to * per_peer + i] = tag(R, to, i);
    const Tensor send = Tensor::from_host(host).to(ctx);
    Tensor recv = Tensor::empty({per_peer * W}, DType::i32, ctx);
    const std::vector<int64_t> counts(W, per_peer);
    auto run_ours = [&] { ours->all_to_all_v(send, counts, recv, counts, ctx.stream, "bench_comm"); };
    auto run_ours_nb = [&] { ours_nb->all_to_all_v(send, counts, recv, counts, ctx.stream, "bench_comm"); };
    auto run_nccl = [&] {
#if SY_HAVE_NCCL_ALLTOALL
      NCCL_CHECK(ncclAlltoAll(send.raw(), recv.raw(), per_peer, ncclInt32, peer.get(), stream));
#endif
    };
    // Wrong elements after one call into a poisoned buffer.
    auto wrong = [&](const std::function<void()>& f) {
      CUDA_CHECK(cudaMemsetAsync(recv.raw(), 0xff, recv.nbytes(), stream));
      f();
      rt->synchronize();
      const std::vector<int32_t> got = recv.to_vector<int32_t>();
      int64_t n = 0;
      for (int from = 0; from < W; ++from)
        for (int64_t i = 0; i < per_peer; ++i) n += got[from * per_peer + i] != tag(from, R, i);
      return n;
    };
    // Mean seconds of `iters` back-to-back calls after 3 warm-up calls.
    auto timed = [&](const std::function<void()>& f) {
      for (int i = 0; i < 3; ++i) f();
      rt->synchronize();
      MPI_Barrier(MPI_COMM_WORLD);
      EventTimer timer(ctx.stream);
      timer.start();
      for (int i = 0; i < opt.iters; ++i) f();
      return timer.stop_ms() / 1e3 / opt.iters;
    };
    // [ours, ours non-blocking, ncclAlltoAll], the table's order
    int64_t wrong_local[3] = {wrong(run_ours), wrong(run_ours_nb), 0};
    double t_local[3] = {timed(run_ours), timed(run_ours_nb), NAN};
    if (SY_HAVE_NCCL_ALLTOALL) wrong_local[2] = wrong(run_nccl), t_local[2] = timed(run_nccl);
    // The slowest rank decides; wrong elements summed over ranks.
    double t[3];
    int64_t w[3];
    MPI_Allreduce(t_local, t, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(wrong_local, w, 3, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    const double sent = static_cast<double>(per_peer) * 4 * W, factor = W > 1 ? double(W - 1) / W : 1.0;
    const double bw_ours = sent / t[0] / 1e9 * factor, bw_nccl = sent / t[2] / 1e9 * factor;
    if (R == 0) {
      std::printf("%12.0f %10.1f %10.1f %10.1f %7.1f GB/s %7.1f GB/s %9.2f %11lld %11lld\n", sent, t[0] * 1e6,
                  t[1] * 1e6, t[2] * 1e6, bw_ours, bw_nccl, t[2] / t[0], static_cast<long long>(w[0] + w[1]),
                  static_cast<long long>(w[2]));
      std::fflush(stdout);
    }
    rows.push_back({{"ranks", W}, {"bytes_per_rank", sent}, {"ours_s", t[0]}, {"ours_busbw_gbs", bw_ours},
                    {"wrong_ours", w[0]}, {"ours_nonblocking_s", t[1]}, {"wrong_ours_nonblocking", w[1]}});
    if (SY_HAVE_NCCL_ALLTOALL)
      rows.back().update({{"nccl_s", t[2]}, {"nccl_busbw_gbs", bw_nccl}, {"ratio", t[2] / t[0]}, {"wrong_nccl", w[2]}});
    wrong_total += w[0] + w[1];
  }
  // Wrong elements from our collective are a failure, not a figure.
  if (wrong_total > 0)
    throw BackendError("bench_comm --nccl: all_to_all_v left " + std::to_string(wrong_total) + " elements wrong");
  return rows;
}

#endif

}  // namespace sy::bench
