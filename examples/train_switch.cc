// train_switch: train a Switchyard model from a text-format config, on one
// process or on several under mpirun (data + expert parallelism).
//
//   build/bin/train_switch --config configs/tiny.pbtxt [--set k=v ...] [--metrics out.jsonl]
//   mpirun -np 4 build/bin/train_switch --config configs/switch_tiny.pbtxt --set parallel.expert_parallel=4
//   build/bin/train_switch --resume latest [--set k=v ...]       continue the run in train.checkpoint_dir
//   build/bin/train_switch --resume DIR --eval-only               validation loss and routing of a checkpoint
//
// --resume DIR|latest restores a checkpoint (runtime/checkpoint.h) and trains
// on from its step; the config is the checkpoint's (--set changes fields;
// --config replaces it, and must describe the same model). At another world
// size set parallel.expert_parallel to one that divides it and
// moe.num_experts: the experts are resharded.
//
// Exit codes:
//   0  done
//   1  any other error
//   2  bad input: config, override, data file, checkpoint (one line naming the
//      file and the field or tensor)
//   3  stopped: train.max_bad_steps steps in a row had a non-finite loss or
//      gradient norm (one line naming the step and the first non-finite layer)
//   4  stopped by SIGTERM or SIGINT: the step in progress finished and a
//      checkpoint was written (a second signal ends the process at once)
// Under mpirun a rank that fails prints "error: rank R: ..." and aborts the
// whole job, so no other rank waits on it; the stops of codes 3 and 4 are
// agreed by every rank at a step boundary, so all ranks exit with the code.
// mpirun forwards SIGTERM and SIGINT to the ranks and sends SIGKILL
// odls_base_sigkill_timeout seconds later (OpenMPI 4: default 1 s); give the
// ranks time to write their checkpoint with
//   mpirun --mca odls_base_sigkill_timeout 60 ...
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <thread>

#include "comm/mpi_communicator.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/metrics.h"
#include "runtime/trainer.h"

namespace {

constexpr int kExitNonFinite = 3, kExitSignal = 4;

volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_stop_signal(int sig) {
  g_signal = sig;
  std::signal(sig, SIG_DFL);  // a second one ends the process at once
}

void install_stop_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

// --inject-fault KIND:RANK:STEP: at step STEP, rank RANK throws ("throw"),
// blocks forever ("hang") or exits at once ("exit"), to test that the job
// ends with one line naming the rank and never hangs; or poisons the first
// weight of the last block's first LayerNorm with NaN, for that step only
// ("nan": restored before the next step) or from then on ("nan_stay"), to
// test the non-finite policy.
std::function<void(int64_t, sy::Transformer&)> fault_hook(const std::string& spec, int world_rank) {
  const auto a = spec.find(':'), b = spec.rfind(':');
  if (a == std::string::npos || a == b) throw sy::ConfigError("--inject-fault " + spec + ": expected KIND:RANK:STEP");
  const std::string kind = spec.substr(0, a);
  if (kind != "throw" && kind != "hang" && kind != "exit" && kind != "nan" && kind != "nan_stay")
    throw sy::ConfigError("--inject-fault " + spec + ": KIND is throw, hang, exit, nan or nan_stay");
  const int rank = std::stoi(spec.substr(a + 1, b - a - 1));
  const int64_t step = std::stoll(spec.substr(b + 1));
  auto saved = std::make_shared<float>(0.f);
  return [=](int64_t s, sy::Transformer& model) {
    if (world_rank != rank) return;
    const std::string victim = "h" + std::to_string(model.blocks().size() - 1) + ".ln1.w";
    if (kind == "nan" && s == step + 1) model.params().find(victim)->value.f32()[0] = *saved;
    if (s != step) return;
    if (kind == "hang")
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    if (kind == "exit") std::_Exit(3);
    if (kind == "nan" || kind == "nan_stay") {
      float* w = model.params().find(victim)->value.f32();
      *saved = w[0];
      w[0] = std::numeric_limits<float>::quiet_NaN();
      return;
    }
    throw sy::Error("injected fault on rank " + std::to_string(rank) + " at step " + std::to_string(step));
  };
}

int run(int argc, char** argv, int world_rank, int world_size) {
  CLI::App app{"Train a Switchyard model"};
  std::string config_path, metrics_path, fault, resume;
  std::vector<std::string> overrides;
  int threads = 1;
  bool eval_only = false;
  app.add_option("--config", config_path, "text-format config (configs/*.pbtxt); with --resume, the checkpoint's by default");
  app.add_option("--set", overrides, "override a field: path.to.field=value (repeatable)");
  app.add_option("--metrics", metrics_path, "write one JSON line per logged step here (rank 0); appended to on --resume");
  app.add_option("--threads", threads, "OpenBLAS threads per rank for the CPU backend")->check(CLI::Range(1, 1024));
  app.add_option("--resume", resume, "continue from a checkpoint: its directory, or 'latest' in train.checkpoint_dir");
  app.add_flag("--eval-only", eval_only, "with --resume: validation loss and routing of the checkpoint, no training");
  app.add_option("--inject-fault", fault,
                 "testing failure handling: KIND:RANK:STEP with KIND throw, hang, exit, nan or nan_stay");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (config_path.empty() && resume.empty()) throw sy::ConfigError("--config is required (or --resume a checkpoint)");
  if (eval_only && resume.empty()) throw sy::ConfigError("--eval-only needs --resume DIR|latest");

  openblas_set_num_threads(threads);
  sy::Config cfg;
  std::string checkpoint, source = config_path;
  if (!config_path.empty()) cfg = sy::load_config(config_path, overrides);
  if (!resume.empty()) {
    // 'latest' lives in train.checkpoint_dir: the config's, or the default with --set applied.
    sy::Config probe = cfg;
    if (config_path.empty())
      for (const auto& o : overrides) sy::apply_override(probe, o);
    checkpoint = sy::resolve_checkpoint(resume, probe.train().checkpoint_dir());
    if (config_path.empty()) {
      source = sy::join_path(checkpoint, "manifest.pbtxt");
      cfg = sy::read_manifest(checkpoint).config();
      for (const auto& o : overrides) sy::apply_override(cfg, o);
      sy::validate_config(cfg, overrides.empty() ? source : source + " (with --set overrides)");
    }
  }
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
  if (world_rank == 0) {
    // AUTO resolves to the CPU: there are no CUDA kernels yet (issue 6).
    std::cout << "switchyard: backend cpu (" << (cfg.backend() == switchyard::Config::AUTO ? "auto: " : "")
              << threads << " thread" << (threads > 1 ? "s" : "") << " per rank), "
              << world_size << " rank" << (world_size > 1 ? "s" : "");
    if (world_size > 1) std::cout << " (mpi, expert_parallel " << cfg.parallel().expert_parallel() << ")";
    std::cout << ", config " << source << "\n";
  }
  if (eval_only) {
    opts.log = nullptr;
  } else {
    opts.stop_requested = [] { return g_signal != 0; };
    install_stop_handlers();
  }
  sy::Trainer trainer(cfg, opts);
  if (!checkpoint.empty()) trainer.restore(checkpoint, !eval_only);

  if (eval_only) {
    sy::EvalReport e;
    e.step = trainer.completed_steps();
    e.val_loss = trainer.evaluate();
    e.moe = trainer.held_out_routing();
    e.depth = trainer.held_out_depth();
    if (world_rank == 0) {
      std::cout << "checkpoint " << checkpoint << "\n" << sy::eval_progress_line(e) << "\n";
      if (!metrics_path.empty()) sy::MetricsWriter(metrics_path, true).write(sy::eval_metrics_line(e));
    }
    return 0;
  }

  const sy::TrainResult r = trainer.run();
  switch (r.stop) {
    case sy::TrainResult::Stop::done:
      if (world_rank == 0 && r.losses.empty())
        std::cout << "done: nothing to train: the checkpoint is at step " << r.last_step << " of train.steps = "
                  << cfg.train().steps() << " (--set train.steps=N to go on)\n";
      else if (world_rank == 0)
        std::cout << "done: loss " << r.first_loss << " -> " << r.final_loss << ", val " << r.final_val_loss
                  << (r.checkpoint.empty() ? "" : ", checkpoint " + r.checkpoint) << "\n";
      return 0;
    case sy::TrainResult::Stop::signal:
      if (world_rank == 0)
        std::cout << "stopped by "
                  << (g_signal == SIGINT ? "SIGINT" : g_signal == SIGTERM ? "SIGTERM" : "a signal to another rank")
                  << " after step " << r.last_step
                  << ": checkpoint " << r.checkpoint << "\n";
      return kExitSignal;
    case sy::TrainResult::Stop::nonfinite:
      if (world_rank == 0) std::cerr << "error: " << r.message << std::endl;
      return kExitNonFinite;
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  sy::comm::MpiSession mpi(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int code = 0;
  bool agreed = false;  // every rank stopped together: no abort
  try {
    code = run(argc, argv, rank, size);
    agreed = true;
  } catch (const sy::AgreedError& e) {
    if (*e.what()) std::cerr << "error: " << (size > 1 ? "rank " + std::to_string(rank) + ": " : "") << e.what() << std::endl;
    code = 2;
    agreed = true;
  } catch (const sy::ConfigError& e) {
    std::cerr << "error: " << (size > 1 ? "rank " + std::to_string(rank) + ": " : "") << e.what() << std::endl;
    code = 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << (size > 1 ? "rank " + std::to_string(rank) + ": " : "") << e.what() << std::endl;
    code = 1;
  }
  // One rank's failure ends the job: the others may be inside a collective.
  if (code != 0 && !agreed && size > 1) sy::comm::abort_job(code);
  return code;
}
