// train_switch: train a Switchyard model from a text-format config, on one
// process or on several under mpirun (data + expert parallelism).
//
//   build/bin/train_switch --config configs/tiny.pbtxt [--set k=v ...] [--metrics out.jsonl]
//   mpirun -np 4 build/bin/train_switch --config configs/switch_tiny.pbtxt --set parallel.expert_parallel=4
//
// Exit codes: 0 done, 2 bad input (config, override, data file), 1 any other
// error. Under mpirun a rank that fails prints "error: rank R: ..." and aborts
// the whole job, so no other rank waits on it.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <thread>

#include "comm/mpi_communicator.h"
#include "runtime/trainer.h"

namespace {

// --inject-fault KIND:RANK:STEP: at step STEP, rank RANK throws ("throw"),
// blocks forever ("hang") or exits at once ("exit"), to test that the job
// ends with one line naming the rank and never hangs.
std::function<void(int64_t)> fault_hook(const std::string& spec, int world_rank) {
  const auto a = spec.find(':'), b = spec.rfind(':');
  if (a == std::string::npos || a == b) throw sy::ConfigError("--inject-fault " + spec + ": expected KIND:RANK:STEP");
  const std::string kind = spec.substr(0, a);
  const int rank = std::stoi(spec.substr(a + 1, b - a - 1));
  const int64_t step = std::stoll(spec.substr(b + 1));
  return [=](int64_t s) {
    if (s != step || world_rank != rank) return;
    if (kind == "hang")
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    if (kind == "exit") std::_Exit(3);
    throw sy::Error("injected fault on rank " + std::to_string(rank) + " at step " + std::to_string(step));
  };
}

int run(int argc, char** argv, int world_rank, int world_size) {
  CLI::App app{"Train a Switchyard model"};
  std::string config_path, metrics_path, fault;
  std::vector<std::string> overrides;
  int threads = 1;
  app.add_option("--config", config_path, "text-format config (configs/*.pbtxt)")->required();
  app.add_option("--set", overrides, "override a field: path.to.field=value (repeatable)");
  app.add_option("--metrics", metrics_path, "write one JSON line per logged step here (rank 0)");
  app.add_option("--threads", threads, "OpenBLAS threads per rank for the CPU backend")->check(CLI::Range(1, 1024));
  app.add_option("--inject-fault", fault,
                 "testing failure handling: KIND:RANK:STEP with KIND throw, hang or exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  openblas_set_num_threads(threads);
  sy::Config cfg = sy::load_config(config_path, overrides);
  sy::TrainOptions opts{metrics_path, &std::cout};
  std::unique_ptr<sy::ParallelContext> par;
  if (world_size > 1) {
    par = sy::ParallelContext::create(std::make_unique<sy::comm::MpiCommunicator>(MPI_COMM_WORLD),
                                      cfg.parallel().expert_parallel(), cfg.parallel().timeout_s());
    opts.par = par.get();
  } else if (cfg.parallel().expert_parallel() != 1) {
    throw sy::ConfigError("parallel.expert_parallel = " + std::to_string(cfg.parallel().expert_parallel()) +
                          ": must divide the world size 1 (launch with mpirun -np N)");
  }
  if (!fault.empty()) opts.before_step = fault_hook(fault, world_rank);
  // AUTO resolves to the CPU until every op (attention included) has CUDA kernels.
  sy::Trainer trainer(cfg, opts);
  if (world_rank == 0) {
    if (trainer.device())
      std::cout << "switchyard: backend cuda (" << trainer.device()->name() << "), ";
    else
      std::cout << "switchyard: backend cpu (" << (cfg.backend() == switchyard::Config::AUTO ? "auto: " : "")
                << threads << " thread" << (threads > 1 ? "s" : "") << " per rank), ";
    std::cout << world_size << " rank" << (world_size > 1 ? "s" : "");
    if (world_size > 1) std::cout << " (mpi, expert_parallel " << cfg.parallel().expert_parallel() << ")";
    std::cout << ", config " << config_path << "\n";
  }
  sy::TrainResult r = trainer.run();
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
