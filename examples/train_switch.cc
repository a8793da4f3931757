// train_switch: train a Switchyard model from a text-format config, on one
// process or on several under mpirun (data + expert parallelism).
//
//   build/bin/train_switch --config configs/tiny.pbtxt [--set k=v ...] [--metrics out.jsonl [--overwrite]]
//   mpirun -np 4 build/bin/train_switch --config configs/switch_tiny.pbtxt --set parallel.expert_parallel=4
//
// Exit codes: 0 done, 2 bad input (config, override, data file), 1 any other
// error. Under mpirun the ranks agree at start-up: a config that differs
// between ranks, or bad input on any rank, is printed once by rank 0 and every
// rank exits with the code. A rank that fails later prints "error: rank R: ..."
// and aborts the whole job, so no other rank waits on it.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <chrono>
#include <climits>
#include <functional>
#include <iostream>
#include <thread>

#include "comm/mpi_communicator.h"
#include "runtime/metrics.h"
#include "runtime/startup.h"
#include "runtime/trainer.h"

namespace {

// --inject-fault KIND:RANK:STEP: at step STEP, rank RANK throws ("throw"),
// blocks forever ("hang") or exits at once ("exit"), to test that the job
// ends with one line naming the rank and never hangs. Runs as the trainer's
// before_step hook.
std::function<void(int64_t)> fault_hook(const std::string& fault, int world_rank) {
  const std::string allowed = ": expected KIND:RANK:STEP with KIND throw, hang or exit and RANK, STEP integers >= 0";
  auto a = fault.find(':'), b = fault.rfind(':');
  if (a == std::string::npos || a == b) throw sy::ConfigError("--inject-fault " + fault + allowed);
  auto integer = [&](const std::string& s, const char* what) {
    long long v = -1;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size() || v < 0 || v > INT32_MAX)
      throw sy::ConfigError("--inject-fault " + fault + ": " + what + " '" + s + "' is not an integer in [0, 2147483647]" + allowed);
    return v;
  };
  const std::string kind = fault.substr(0, a);
  if (kind != "throw" && kind != "hang" && kind != "exit")
    throw sy::ConfigError("--inject-fault " + fault + ": KIND '" + kind + "' is not throw, hang or exit" + allowed);
  const int rank = static_cast<int>(integer(fault.substr(a + 1, b - a - 1), "RANK"));
  const int64_t step = integer(fault.substr(b + 1), "STEP");
  return [=](int64_t s) {
    if (s != step || world_rank != rank) return;
    if (kind == "hang")
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    if (kind == "exit") std::_Exit(3);
    throw sy::Error("injected fault on rank " + std::to_string(rank) + " at step " + std::to_string(step));
  };
}

// Ranks of the job on this machine (they share its memory). Collective.
int ranks_on_this_machine() {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int n = 1;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  return n;
}

int run(int argc, char** argv, int world_rank, int world_size) {
  CLI::App app{"Train a Switchyard model"};
  std::string config_path, metrics_path, fault;
  std::vector<std::string> overrides;
  int threads = 1;
  bool overwrite = false;
  app.add_option("--config", config_path, "text-format config (configs/*.pbtxt)")->required();
  app.add_option("--set", overrides, "override a field: path.to.field=value (repeatable)");
  app.add_option("--metrics", metrics_path, "write one JSON line per logged step here (rank 0)");
  app.add_flag("--overwrite", overwrite, "replace an existing non-empty --metrics file");
  app.add_option("--threads", threads, "OpenBLAS threads per rank for the CPU backend")->check(CLI::Range(1, 1024));
  app.add_option("--inject-fault", fault,
                 "testing failure handling: KIND:RANK:STEP with KIND throw, hang or exit");

  // Start-up: each phase runs on every rank and the ranks agree on its outcome
  // before any goes on, so a bad config is reported once (by rank 0) and no
  // rank waits in a collective for one that stopped.
  std::unique_ptr<sy::comm::MpiCommunicator> world;
  if (world_size > 1) world = std::make_unique<sy::comm::MpiCommunicator>(MPI_COMM_WORLD);
  const int ranks_here = world_size > 1 ? ranks_on_this_machine() : 1;
  auto agreed = [&](const std::function<void()>& phase) { world ? sy::agree_on(*world, phase) : phase(); };

  bool help = false;
  sy::Config cfg;
  sy::TrainOptions opts{metrics_path, &std::cout};
  agreed([&] {
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      if (e.get_exit_code() != 0) throw sy::ConfigError(std::string(e.what()) + " (see --help)");
      if (world_rank == 0) app.exit(e);  // --help
      help = true;
      return;
    }
    cfg = sy::load_config(config_path, overrides);
    opts.metrics_path = metrics_path;
    if (world_rank == 0) {
      const bool text = cfg.data().source() == switchyard::DataConfig::TEXT_FILE;
      sy::check_metrics_path(metrics_path, {{"the config file", config_path}, {"data.path", text ? cfg.data().path() : ""}},
                             overwrite);
    }
    if (world_size == 1 && cfg.parallel().expert_parallel() != 1)
      throw sy::ConfigError("parallel.expert_parallel = " + std::to_string(cfg.parallel().expert_parallel()) +
                            ": must divide the world size 1 (launch with mpirun -np N)");
    if (!fault.empty()) opts.before_step = fault_hook(fault, world_rank);
    sy::check_memory(cfg, world_size, ranks_here, sy::physical_memory_bytes(),
                     overrides.empty() ? config_path : config_path + " (with --set overrides)");
  });
  if (help) return 0;
  // Replicas must train the same model on the same data: one config, one build.
  if (world) {
    const std::string mismatch = sy::config_mismatch(*world, cfg, sy::code_version());
    if (!mismatch.empty()) throw sy::AgreedError(mismatch, 2);
  }

  openblas_set_num_threads(threads);
  std::unique_ptr<sy::ParallelContext> par;
  std::unique_ptr<sy::Trainer> trainer;
  agreed([&] {
    if (world_size > 1) {
      par = sy::ParallelContext::create(std::make_unique<sy::comm::MpiCommunicator>(MPI_COMM_WORLD),
                                        cfg.parallel().expert_parallel(), cfg.parallel().timeout_s());
      opts.par = par.get();
    }
    // AUTO resolves to the CPU until every op (attention included) has CUDA kernels.
    trainer = std::make_unique<sy::Trainer>(cfg, opts);
  });
  if (world_rank == 0) {
    if (trainer->device())
      std::cout << "switchyard: backend cuda (" << trainer->device()->name() << "), ";
    else
      std::cout << "switchyard: backend cpu (" << (cfg.backend() == switchyard::Config::AUTO ? "auto: " : "")
                << threads << " thread" << (threads > 1 ? "s" : "") << " per rank), ";
    std::cout << world_size << " rank" << (world_size > 1 ? "s" : "");
    if (world_size > 1) std::cout << " (mpi, expert_parallel " << cfg.parallel().expert_parallel() << ")";
    std::cout << ", config " << config_path << "\n";
  }
  sy::TrainResult r = trainer->run();
  if (world_rank == 0)
    std::cout << "done: loss " << r.first_loss << " -> " << r.final_loss << ", val " << r.final_val_loss << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  sy::comm::MpiSession mpi(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int code = 0;
  try {
    code = run(argc, argv, rank, size);
  } catch (const sy::AgreedError& e) {
    // Every rank holds this error (start-up): rank 0 prints it, all exit.
    if (rank == 0) std::cerr << "error: " << e.what() << std::endl;
    return e.exit_code();
  } catch (const sy::ConfigError& e) {
    std::cerr << "error: " << (size > 1 ? "rank " + std::to_string(rank) + ": " : "") << e.what() << std::endl;
    code = 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << (size > 1 ? "rank " + std::to_string(rank) + ": " : "") << e.what() << std::endl;
    code = 1;
  }
  // One rank's failure ends the job: the others may be inside a collective.
  if (code != 0 && size > 1) sy::comm::abort_job(code);
  return code;
}
