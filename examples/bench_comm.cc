// bench_comm: Communicator::all_to_all_v against a plain MPI_Alltoallv loop
// at the same sizes (nccl-tests' recipe: warm-up, then the median of timed
// iterations; algorithm bandwidth = bytes a rank sends / time, bus bandwidth
// = algbw * (n-1)/n). Prints a table on rank 0 and writes JSON.
// With --nccl, on GPUs: our NCCL all_to_all_v beside ncclAlltoAll on the
// same device buffers, 1-256 MiB a rank (examples/bench_comm_nccl.h).
//
//   mpirun -np 4 build/bin/bench_comm [--json docs/bench_comm_np4.json] [--iters 50]
//   mpirun -np 1 build/bin/bench_comm --nccl [--max-mib 256] [--json out.json]
//   mpirun -np 4 build/bin/bench_comm --all-gather [--json out.json]   (see bench_all_gather)
//   mpirun -np 4 build/bin/bench_comm --all-reduce [--json out.json]   (see bench_all_reduce)
// With --device, ours moves device tensors through MpiCommunicator (staged
// through host memory: the path of several ranks sharing a GPU); the MPI
// column stays host buffers, so ours/mpi is what the staging costs (at two
// ranks or more: one rank's all-to-all copies to itself on the device).
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "comm/mpi_communicator.h"
#include "core/device_runtime.h"
#include "examples/bench_comm_nccl.h"
#include "examples/cli.h"
#include "runtime/output_file.h"
#include "runtime/run_tool.h"
#include "runtime/startup.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The ways of one collective timed on the same sizes (from 1 KiB in all,
// times `step` up to `max_bytes`), each way's buffer reset before each call: warm-up, then the
// median of `iters` calls after a barrier, the slowest rank's (one per way,
// then the most elements any rank found wrong). check(way) counts the
// elements off the exact answer after each call; any wrong element ends the
// run after its row is printed (exit status 1).
struct Ways {
  int n;                                                     // ways
  std::function<void(int64_t elems)> resize;                 // a size's buffers (elements in all)
  std::function<void(int way)> reset, run;
  std::function<int64_t(int way)> check;
  // A size's row: its bytes in all and mx (each way's seconds, then #wrong).
  std::function<void(int64_t bytes, const std::vector<double>& mx)> row;
};
void time_ways(const char* name, Ways& w, int ranks, int iters, int64_t max_bytes, int step) {
  for (int64_t bytes = 1 << 10; bytes <= max_bytes; bytes *= step) {
    const int64_t elems = std::max<int64_t>(1, bytes / 4 / ranks) * ranks;
    w.resize(elems);
    int64_t wrong = 0;
    std::vector<std::vector<double>> times(w.n);
    for (int it = 0; it < iters + 5; ++it) {  // 5 warm-up rounds
      for (int way = 0; way < w.n; ++way) {
        w.reset(way);
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        w.run(way);
        const double t1 = MPI_Wtime();
        if (it >= 5) times[way].push_back(t1 - t0);
        wrong += w.check(way);
      }
    }
    std::vector<double> m(w.n + 1), mx(w.n + 1);
    for (int way = 0; way < w.n; ++way) m[way] = median(times[way]);
    m[w.n] = static_cast<double>(wrong);  // (the most any rank counted: any > 0 fails)
    MPI_Allreduce(m.data(), mx.data(), w.n + 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    w.row(elems * 4, mx);
    if (mx[w.n] > 0)
      throw sy::Error(std::string("bench_comm --") + name + ": elements wrong at " + std::to_string(elems * 4) +
                      " bytes");
  }
}

// --all-gather: an in-place all-gather of equal parts (a sharded update's
// values, parallel.shard_optimizer) three ways: MPI_Allgatherv on a plain
// buffer, our all_gather_v (the same call behind the Communicator), and the
// base class's one broadcast a part (what the sharded update ran before).
// busbw = total bytes / time x (n-1)/n (nccl-tests' all-gather); #wrong: the
// elements off their rank's tag.
nlohmann::json bench_all_gather(sy::comm::MpiCommunicator& comm, int iters) {
  const int W = comm.size(), R = comm.rank();
  std::vector<float> plain;
  sy::Tensor t;
  std::vector<int64_t> rows;
  std::vector<int> c(W), d(W);
  int64_t part = 0;
  Ways w{3};
  w.resize = [&](int64_t elems) {
    part = elems / W;
    plain.assign(elems, 0.0f);
    t = sy::Tensor::empty({elems}, sy::DType::f32, sy::host_ctx());
    rows.assign(W, part);
    for (int i = 0; i < W; ++i) c[i] = static_cast<int>(part), d[i] = static_cast<int>(i * part);
  };
  auto buf = [&](int way) { return way == 0 ? plain.data() : t.data<float>(); };
  w.reset = [&](int way) {
    float* v = buf(way);
    for (int64_t i = 0; i < part * W; ++i) v[i] = i / part == R ? static_cast<float>(R + 1) : -1.0f;
  };
  w.run = [&](int way) {
    if (way == 0)
      MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, plain.data(), c.data(), d.data(), MPI_FLOAT, MPI_COMM_WORLD);
    else if (way == 1)
      comm.all_gather_v(t, rows, sy::Stream{}, "bench");
    else
      comm.Communicator::all_gather_v(t, rows, sy::Stream{}, "bench");
  };
  w.check = [&](int way) {
    const float* v = buf(way);
    int64_t wrong = 0;
    for (int64_t i = 0; i < part * W; ++i) wrong += v[i] != static_cast<float>(i / part + 1);
    return wrong;
  };
  if (R == 0)
    std::printf("%12s %12s %12s %12s %12s %10s %7s\n", "bytes", "mpi_us", "ours_us", "bcasts_us", "ours_busbw",
                "ours/mpi", "#wrong");
  nlohmann::json out = nlohmann::json::array();
  w.row = [&](int64_t total, const std::vector<double>& mx) {
    const double bw = total / mx[1] / 1e9 * (W > 1 ? double(W - 1) / W : 1.0);
    if (R == 0)
      std::printf("%12lld %12.1f %12.1f %12.1f %7.2f GB/s %10.2f %7.0f\n", static_cast<long long>(total), mx[0] * 1e6,
                  mx[1] * 1e6, mx[2] * 1e6, bw, mx[0] / mx[1], mx[3]);
    out.push_back({{"op", "all_gather"}, {"ranks", W}, {"bytes", total}, {"mpi_s", mx[0]}, {"ours_s", mx[1]},
                   {"broadcasts_s", mx[2]}, {"ours_busbw_gbs", bw}, {"ratio", mx[0] / mx[1]}, {"wrong", mx[3]}});
  };
  time_ways("all-gather", w, W, iters, int64_t{1} << 26, 4);
  return out;
}

// --all-reduce: a sum in place (the gradients' buckets), 1 KiB to
// --max-mib (256 MiB; x2), three ways:
// MPI_Allreduce, our ring (reduce-scatter of MPI_Sendrecv steps, then
// MPI_Allgatherv) at every size, and our all_reduce_sum as it chooses
// (the ring from MpiCommunicator::kRingMinBytes on one node; `path` says
// which it took). busbw = bytes / time x 2 (n-1)/n (nccl-tests'
// all-reduce); #wrong: elements off the exact sum (rank r's element i is
// r + 1 + i mod 7, small integers).
nlohmann::json bench_all_reduce(sy::comm::MpiCommunicator& comm, int iters, int64_t max_bytes) {
  const int W = comm.size(), R = comm.rank();
  sy::Tensor t[3];
  int64_t n = 0;
  Ways w{3};
  w.resize = [&](int64_t elems) {
    n = elems;
    for (sy::Tensor& x : t) x = sy::Tensor::empty({elems}, sy::DType::f32, sy::host_ctx());
  };
  w.reset = [&](int way) {
    float* v = t[way].data<float>();
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(R + 1 + i % 7);
  };
  w.run = [&](int way) {
    if (way == 0)
      MPI_Allreduce(MPI_IN_PLACE, t[0].raw(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    else if (way == 1) {
      comm.set_ring_all_reduce(true, 0);
      comm.all_reduce_sum(t[1], sy::Stream{}, "bench");
      comm.set_ring_all_reduce(true);
    } else {
      comm.all_reduce_sum(t[2], sy::Stream{}, "bench");
    }
  };
  w.check = [&](int way) {
    const float* v = t[way].data<float>();
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; ++i) wrong += v[i] != static_cast<float>(W * (W + 1) / 2 + W * (i % 7));
    return wrong;
  };
  if (R == 0)
    std::printf("%12s %12s %12s %12s %6s %12s %10s %7s\n", "bytes", "mpi_us", "ring_us", "ours_us", "path",
                "ours_busbw", "mpi/ours", "#wrong");
  nlohmann::json out = nlohmann::json::array();
  w.row = [&](int64_t total, const std::vector<double>& mx) {
    const double bw = total / mx[2] / 1e9 * (W > 1 ? 2.0 * (W - 1) / W : 1.0);
    const char* path = comm.ring_all_reduce(total) ? "ring" : "mpi";
    if (R == 0)
      std::printf("%12lld %12.1f %12.1f %12.1f %6s %7.2f GB/s %10.2f %7.0f\n", static_cast<long long>(total),
                  mx[0] * 1e6, mx[1] * 1e6, mx[2] * 1e6, path, bw, mx[0] / mx[2], mx[3]);
    out.push_back({{"op", "all_reduce"}, {"ranks", W}, {"bytes", total}, {"mpi_s", mx[0]}, {"ring_s", mx[1]},
                   {"ours_s", mx[2]}, {"path", path}, {"ours_busbw_gbs", bw}, {"ratio", mx[0] / mx[2]},
                   {"wrong", mx[3]}});
  };
  time_ways("all-reduce", w, W, iters, max_bytes, 2);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  sy::comm::MpiSession mpi(&argc, &argv);
  CLI::App app{"all_to_all_v benchmark"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string json_path;
  int iters = 50;
  bool overwrite = false;
  app.add_option("--json", json_path, "write results here (rank 0)");
  app.add_flag("--overwrite", overwrite, "replace an existing --json file");
  app.add_option("--iters", iters, "timed iterations per size")->check(CLI::Range(3, 100000));
  bool nccl = false, device = false, all_gather = false, all_reduce = false;
  app.add_flag("--all-gather", all_gather,
               "an in-place all-gather instead: MPI_Allgatherv, ours, and one broadcast a part (host buffers)");
  app.add_flag("--all-reduce", all_reduce,
               "an in-place sum instead: MPI_Allreduce, our ring, and ours as it chooses (host buffers)");
  app.add_flag("--device", device, "ours on device tensors (the node-local GPU), staged through the host by MPI");
  int64_t max_mib = 256;
  app.add_flag("--nccl", nccl, "on GPUs: our NCCL all_to_all_v beside ncclAlltoAll (device buffers)");
  app.add_option("--max-mib", max_mib,
                 "--nccl: the largest size a rank sends, MiB (from 1, x4); --all-reduce: the largest sum")
      ->check(CLI::Range(1, 4096));
  // (one benchmark a run: each of these picks one)
  app.get_option("--all-gather")->excludes("--all-reduce")->excludes("--nccl")->excludes("--device");
  app.get_option("--all-reduce")->excludes("--nccl")->excludes("--device");
  app.get_option("--nccl")->excludes("--device");
  // (one line and exit 2 on a usage error, as every tool: examples/cli.h)
  if (const int rc = sy::parse_options(app, argc, argv); rc >= 0) return rc;
  if (app.count("--max-mib") > 0 && !nccl && !all_reduce) {
    std::cerr << "error: --max-mib " << max_mib << ": sizes --nccl's or --all-reduce's runs; the default "
              << "benchmark's sizes are fixed (--help lists the options)\n";
    return 2;
  }

  sy::comm::MpiCommunicator comm(MPI_COMM_WORLD);
  const int W = comm.size(), R = comm.rank();
  return sy::run_tool(
      [&] {
        // Rank 0 writes the JSON; a refusal reaches every rank (agree_on), before the work.
        sy::agree_on(comm, [&] {
          if (R == 0) sy::check_output_path("--json", json_path, {}, overwrite);
        });
        if (nccl) {
          const nlohmann::json rows = sy::bench::bench_nccl_all_to_all(comm, {iters, max_mib << 20});
          if (R == 0 && !json_path.empty()) std::ofstream(json_path) << rows.dump(1) << "\n";
          return 0;
        }
        if (all_gather || all_reduce) {
          const nlohmann::json rows =
              all_gather ? bench_all_gather(comm, iters) : bench_all_reduce(comm, iters, max_mib << 20);
          if (R == 0 && !json_path.empty()) std::ofstream(json_path) << rows.dump(1) << "\n";
          return 0;
        }
        std::unique_ptr<sy::DeviceRuntime> rt;
        if (device) {
          const int gpu = sy::comm::node_local_gpu(MPI_COMM_WORLD);
          if (gpu < 0) throw sy::BackendError("bench_comm --device: no CUDA device");
          rt = sy::DeviceRuntime::create(gpu);
        }
        nlohmann::json out = nlohmann::json::array();
        if (R == 0)
          std::printf("%12s %12s %12s %12s %12s %8s\n", "bytes/rank", "mpi_us", "ours_us", "mpi_busbw", "ours_busbw",
                      "ours/mpi");
        for (int64_t bytes = 1 << 10; bytes <= (int64_t{1} << 24); bytes <<= 2) {
          const int64_t per_peer = std::max<int64_t>(1, bytes / 4 / W);  // floats to each rank
          std::vector<float> send(per_peer * W, static_cast<float>(R)), recv(per_peer * W);
          sy::Tensor send_t = sy::Tensor::from_host(send), recv_t = sy::Tensor::from_host(recv);
          if (rt) send_t = send_t.to(rt->ctx()), recv_t = recv_t.to(rt->ctx());
          std::vector<int64_t> counts(W, per_peer);
          std::vector<int> c(W, static_cast<int>(per_peer)), d(W);
          for (int i = 0; i < W; ++i) d[i] = static_cast<int>(i * per_peer);
          std::vector<double> t_mpi, t_ours;
          for (int it = 0; it < iters + 5; ++it) {  // 5 warm-up rounds
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            MPI_Alltoallv(send.data(), c.data(), d.data(), MPI_FLOAT, recv.data(), c.data(), d.data(), MPI_FLOAT,
                          MPI_COMM_WORLD);
            double t1 = MPI_Wtime();
            MPI_Barrier(MPI_COMM_WORLD);
            double t2 = MPI_Wtime();
            comm.all_to_all_v(send_t, counts, recv_t, counts, sy::Stream{}, "bench");
            double t3 = MPI_Wtime();
            if (it >= 5) t_mpi.push_back(t1 - t0), t_ours.push_back(t3 - t2);
          }
          // The slowest rank's median decides.
          double m[2] = {median(t_mpi), median(t_ours)}, mx[2];
          MPI_Allreduce(m, mx, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
          const double sent = static_cast<double>(per_peer) * 4 * W, factor = W > 1 ? double(W - 1) / W : 1.0;
          const double bw_mpi = sent / mx[0] / 1e9 * factor, bw_ours = sent / mx[1] / 1e9 * factor;
          if (R == 0) {
            std::printf("%12.0f %12.1f %12.1f %10.2f GB/s %8.2f GB/s %7.2f\n", sent, mx[0] * 1e6, mx[1] * 1e6, bw_mpi,
                        bw_ours, bw_ours / bw_mpi);
            out.push_back({{"ranks", W}, {"bytes_per_rank", sent}, {"mpi_s", mx[0]}, {"ours_s", mx[1]},
                           {"mpi_busbw_gbs", bw_mpi}, {"ours_busbw_gbs", bw_ours}, {"ratio", bw_ours / bw_mpi},
                           {"device", device}});
          }
        }
        if (R == 0 && !json_path.empty()) std::ofstream(json_path) << out.dump(1) << "\n";
        return 0;
      },
      {R, W}, [](int code) { sy::comm::abort_job(code); });
}
