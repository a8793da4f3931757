// train_switch: train a Switchyard model from a text-format config, on one
// process or on several under mpirun (data + expert parallelism).
//
//   build/bin/train_switch --config configs/tiny.pbtxt [--set k=v ...] [--metrics out.jsonl [--overwrite]]
//   mpirun -np 4 build/bin/train_switch --config configs/switch_tiny.pbtxt --set parallel.expert_parallel=4
//   build/bin/train_switch --resume latest [--set train.steps=N] [--eval-only]
//   build/bin/train_switch --config configs/switch_tiny.pbtxt --init-from DENSE_CHECKPOINT
//
// --resume DIR|latest restores a checkpoint (runtime/checkpoint.h) and trains
// on from its step; the config is the checkpoint's (--set changes fields;
// --config replaces it, and must describe the same model). At another world
// size set parallel.expert_parallel to one that divides it and
// moe.num_experts: the experts are resharded.
//
// --init-from DIR starts a new run (step 1, a fresh optimizer and schedule)
// from another run's weights: the same model's, or a dense model's upcycled
// into the config's MoE layers, every expert a copy of its layer's FFN
// (runtime/checkpoint.h, init_from_checkpoint).
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
// Under mpirun the ranks agree at start-up: a config that differs between
// ranks, or bad input on any rank, is printed once by rank 0 and every rank
// exits with the code; the stops of codes 3 and 4 are agreed at a step
// boundary too. A rank that fails otherwise prints "error: rank R: ..." and
// aborts the whole job, so no other rank waits on it. mpirun forwards SIGTERM
// and SIGINT to the ranks and sends SIGKILL odls_base_sigkill_timeout seconds
// later (OpenMPI 4: default 1 s); give the ranks time to write their
// checkpoint with
//   mpirun --mca odls_base_sigkill_timeout 60 ...
#include <cblas.h>

#include <CLI/CLI.hpp>

#include "examples/cli.h"
#include <algorithm>
#include <charconv>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <thread>

#include <poll.h>
#include <unistd.h>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "core/device.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/metrics.h"
#include "runtime/output_file.h"
#include "runtime/run_tool.h"
#include "runtime/startup.h"
#include "runtime/token_shard.h"
#include "runtime/trainer.h"

namespace {

// Progress lines on stdout that never block training. Under mpirun a rank's
// stdout is a pseudo-terminal that mpirun drains; when mpirun is itself
// stopping (it got SIGTERM and waits odls_base_sigkill_timeout before
// signalling the ranks) it stops draining, and a blocked write on rank 0
// would leave the other ranks waiting in a collective until SIGKILL, with no
// checkpoint written. So a line goes out only when the descriptor can take it
// at once (POLLOUT: at least PIPE_BUF bytes free); otherwise it is dropped.
// Lines are shorter than PIPE_BUF, so a write never blocks.
class DroppingLineBuf : public std::streambuf {
 public:
  explicit DroppingLineBuf(int fd) : fd_(fd) {}

 protected:
  int overflow(int c) override {
    if (c != EOF) line_.push_back(static_cast<char>(c));
    if (c == '\n') emit();
    return c == EOF ? 0 : c;
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    for (std::streamsize i = 0; i < n; ++i) overflow(static_cast<unsigned char>(s[i]));
    return n;
  }
  int sync() override { return 0; }  // whole lines only

 private:
  void emit() {
    pollfd p{fd_, POLLOUT, 0};
    const bool ready = ::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
    size_t off = 0;
    while (ready && off < line_.size()) {
      const ssize_t w = ::write(fd_, line_.data() + off, line_.size() - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    line_.clear();
  }
  int fd_;
  std::string line_;
};

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
// test the non-finite policy. Runs as the trainer's before_step hook.
std::function<void(int64_t, sy::Transformer&)> fault_hook(const std::string& fault, int world_rank) {
  const std::string allowed =
      ": expected KIND:RANK:STEP with KIND throw, hang, exit, nan or nan_stay and RANK, STEP integers >= 0";
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
  if (kind != "throw" && kind != "hang" && kind != "exit" && kind != "nan" && kind != "nan_stay")
    throw sy::ConfigError("--inject-fault " + fault + ": KIND '" + kind + "' is not throw, hang, exit, nan or nan_stay" +
                          allowed);
  const int rank = static_cast<int>(integer(fault.substr(a + 1, b - a - 1), "RANK"));
  const int64_t step = integer(fault.substr(b + 1), "STEP");
  auto saved = std::make_shared<float>(0.f);
  return [=](int64_t s, sy::Transformer& model) {
    if (world_rank != rank) return;
    const std::string victim = "h" + std::to_string(model.blocks().size() - 1) + ".ln1.w";
    // The weight's first value set to v, the old one returned: through a
    // host copy, so on either backend.
    auto poke = [&](float v) {
      sy::Tensor w = model.params().find(victim)->value.rows(0, 1);
      sy::Tensor h = w.to(sy::host_ctx());
      const float old = h.f32()[0];
      h.f32()[0] = v;
      w.copy_from(h, model.ctx());
      return old;
    };
    if (kind == "nan" && s == step + 1) poke(*saved);
    if (s != step) return;
    if (kind == "hang")
      for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    if (kind == "exit") std::_Exit(3);
    if (kind == "nan" || kind == "nan_stay") {
      *saved = poke(std::numeric_limits<float>::quiet_NaN());
      return;
    }
    throw sy::Error("injected fault on rank " + std::to_string(rank) + " at step " + std::to_string(step));
  };
}

// What a run made and left empty - train.checkpoint_dir's new directories, a
// new --metrics file - removed again as run() ends, by return or by throw: a
// run refused after making them (bad data), or one with nothing to train,
// leaves nothing behind.
struct EmptyOutputs {
  std::vector<std::string> dirs;
  std::string metrics;  // set where the file did not exist before the run
  ~EmptyOutputs() {
    std::error_code ec;
    if (!metrics.empty() && std::filesystem::is_regular_file(metrics, ec) && std::filesystem::file_size(metrics, ec) == 0 &&
        !ec)
      std::filesystem::remove(metrics, ec);
    sy::remove_empty_dirs(dirs);
  }
};

int run(int argc, char** argv, int world_rank, int world_size) {
  EmptyOutputs made;
  CLI::App app{"Train a Switchyard model"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string config_path, metrics_path, op_profile_path, fault, resume, init_from;
  int64_t op_profile_steps = 0;
  std::vector<std::string> overrides;
  int threads = 1;
  bool overwrite = false, eval_only = false;
  app.add_option("--config", config_path, "text-format config (configs/*.pbtxt); with --resume, the checkpoint's by default");
  app.add_option("--set", overrides, "override a field: path.to.field=value (repeatable)");
  app.add_option("--metrics", metrics_path, "write one JSON line per logged step here (rank 0); appended to on --resume");
  app.add_option("--op-profile", op_profile_path,
                 "time every op in the steps after the first two (CUDA events on a GPU): a table after the run, "
                 "JSON here (rank 0); slows the steps");
  app.add_option("--op-profile-steps", op_profile_steps,
                 "with --op-profile: profile only the last N steps (the earlier ones measure unprofiled speed)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app.add_flag("--overwrite", overwrite,
               "replace an existing non-empty --metrics or --op-profile file, and another run's checkpoints in "
               "train.checkpoint_dir");
  app.add_option("--threads", threads, "OpenBLAS threads per rank for the CPU backend")->check(CLI::Range(1, 1024));
  app.add_option("--resume", resume, "continue from a checkpoint: its directory, or 'latest' in train.checkpoint_dir");
  app.add_option("--init-from", init_from,
                 "a new run from a checkpoint's weights (a directory, or a checkpoint root holding 'latest'): the "
                 "same model's, or a dense model's with every expert a copy of its layer's FFN (upcycling)");
  app.add_flag("--eval-only", eval_only, "with --resume: validation loss and routing of the checkpoint, no training");
  app.add_option("--inject-fault", fault,
                 "testing failure handling: KIND:RANK:STEP with KIND throw, hang, exit, nan or nan_stay");

  // Start-up: each phase runs on every rank and the ranks agree on its outcome
  // before any goes on, so a bad config is reported once (by rank 0) and no
  // rank waits in a collective for one that stopped.
  std::unique_ptr<sy::comm::MpiCommunicator> world;
  if (world_size > 1) world = std::make_unique<sy::comm::MpiCommunicator>(MPI_COMM_WORLD);
  const sy::comm::NodeLocal node = world_size > 1 ? sy::comm::node_local(MPI_COMM_WORLD) : sy::comm::NodeLocal{0, 1};
  auto agreed = [&](const std::function<void()>& phase) { world ? sy::agree_on(*world, phase) : phase(); };

  bool help = false;
  sy::Config cfg;
  std::string checkpoint, source;
  std::string foreign_checkpoints;  // rank 0: what another run left in train.checkpoint_dir (interval 0)
  std::cout.flush();  // what went before, in order
  static DroppingLineBuf progress_buf(STDOUT_FILENO);
  static std::ostream progress(&progress_buf);
  sy::TrainOptions opts{metrics_path, &progress};
  agreed([&] {
    sy::tidy_defaults(app);
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      if (e.get_exit_code() != 0) throw sy::ConfigError(std::string(e.what()) + " (see --help)");
      if (world_rank == 0) app.exit(e);  // --help
      help = true;
      return;
    }
    if (config_path.empty() && resume.empty()) throw sy::ConfigError("--config is required (or --resume a checkpoint)");
    if (eval_only && resume.empty()) throw sy::ConfigError("--eval-only needs --resume DIR|latest");
    if (!init_from.empty() && !resume.empty())
      throw sy::ConfigError("--init-from " + init_from + " with --resume " + resume +
                            ": --resume continues a run, --init-from starts one from another run's weights (give one)");
    if (!init_from.empty() && config_path.empty()) throw sy::ConfigError("--init-from needs --config (the new run's)");
    source = config_path;
    if (!config_path.empty()) cfg = sy::load_config(config_path, overrides);
    if (!resume.empty()) {
      // 'latest' lives in train.checkpoint_dir: the config's, or the default with --set applied.
      sy::Config probe = cfg;
      if (config_path.empty())
        for (const auto& o : overrides) sy::apply_override(probe, o);
      checkpoint = sy::resolve_checkpoint(resume, probe.train().checkpoint_dir());
      if (!config_path.empty()) sy::adopt_hash_table(cfg, sy::read_manifest(checkpoint));
      if (config_path.empty()) {
        source = sy::join_path(checkpoint, "manifest.pbtxt");
        cfg = sy::read_manifest(checkpoint).config();
        for (const auto& o : overrides) sy::apply_override(cfg, o);
        sy::validate_config(cfg, overrides.empty() ? source : source + " (with --set overrides)");
      }
    }
    if (init_from.empty() && resume.empty() && cfg.train().upcycle_reinit() > 0) {
      std::ostringstream r;
      r << cfg.train().upcycle_reinit();
      throw sy::ConfigError("train.upcycle_reinit = " + r.str() +
                            ": re-draws part of each expert when --init-from upcycles a dense checkpoint; this run "
                            "starts from its init (must be 0 without --init-from)");
    }
    if (!init_from.empty()) {
      checkpoint = sy::resolve_checkpoint(init_from, cfg.train().checkpoint_dir());
      sy::check_init_source(checkpoint, cfg.train().checkpoint_dir());
      sy::adopt_hash_table(cfg, sy::read_manifest(checkpoint));  // balanced hash routing's map, as a resume
    }
    opts.metrics_path = metrics_path;
    opts.op_profile_path = op_profile_path;
    opts.op_profile_steps = op_profile_steps;
    if (world_rank == 0) {
      const bool text = cfg.data().source() == switchyard::DataConfig::TEXT_FILE;
      std::vector<std::pair<std::string, std::string>> inputs = {
          {"the config file", config_path}, {"data.path", text ? cfg.data().path() : ""},
          {"data.tokenizer", cfg.data().tokenizer()}};
      // (every file the run reads: a shard written over ends the run with a
      // bus error when it is mapped; a pattern that matches nothing is left
      // to the data loader to refuse in its own words)
      const bool tokens = cfg.data().source() == switchyard::DataConfig::TOKEN_FILES;
      for (const auto& [field, pattern] : {std::pair<const char*, std::string>{"data.token_files", cfg.data().token_files()},
                                           {"data.val_token_files", cfg.data().val_token_files()}}) {
        if (!tokens || pattern.empty()) continue;
        std::vector<std::string> shards;
        try {
          shards = sy::expand_glob(pattern, field);
        } catch (const sy::ConfigError&) {
        }
        for (const std::string& f : shards) inputs.push_back({std::string("a ") + field + " shard", f});
      }
      // A resumed run appends to its metrics file (not --overwrite's to
      // decide), so only to one: not into a checkpoint, not onto another file.
      sy::check_output_path("--metrics", metrics_path, inputs, overwrite || !resume.empty());
      if (!resume.empty()) sy::check_appendable_metrics("--metrics", metrics_path);
      sy::check_output_path("--op-profile", op_profile_path, inputs, overwrite);
      for (const auto& [option, path] : {std::pair<const char*, std::string>{"--metrics", metrics_path},
                                         {"--op-profile", op_profile_path}})
        sy::check_not_in_checkpoint(option, path);
      if (!op_profile_path.empty() && op_profile_path == metrics_path)
        throw sy::ConfigError("--op-profile " + op_profile_path + ": the same file as --metrics");
      if (op_profile_path.empty() && app.count("--op-profile-steps") > 0)
        throw sy::ConfigError("--op-profile-steps " + std::to_string(op_profile_steps) +
                              ": needs --op-profile FILE (the profile it limits)");
      if (!op_profile_path.empty() && eval_only)
        throw sy::ConfigError("--op-profile " + op_profile_path + ": profiles training steps; --eval-only runs none");
    }
    if (world_size == 1 && cfg.parallel().expert_parallel() != 1)
      throw sy::ConfigError("parallel.expert_parallel = " + std::to_string(cfg.parallel().expert_parallel()) +
                            ": must divide the world size 1 (launch with mpirun -np N, or --set "
                            "parallel.expert_parallel=1; a checkpoint resumes at another expert-parallel size)");
    // Said at load as a config error (exit 2, naming the field), not as the
    // device runtime's failure at the first allocation.
    // (the overrides named where one of them chose the backend)
    const bool set_backend = std::any_of(overrides.begin(), overrides.end(),
                                         [](const std::string& o) { return o.rfind("backend=", 0) == 0; });
    if (cfg.backend() == switchyard::Config::CUDA && sy::node_rank_gpu(node.rank) < 0)
      throw sy::ConfigError((set_backend ? source + " (with --set overrides)" : source) +
                            ": backend = CUDA: no CUDA device is visible to this process (cudaGetDeviceCount found "
                            "none); run where a GPU is, or --set backend=CPU");
    if (!fault.empty()) opts.before_step = fault_hook(fault, world_rank);
    sy::check_memory(cfg, world_size, sy::training_memory(cfg, node.rank, node.size),
                     overrides.empty() ? source : source + " (with --set overrides)");
    // Made now, after the refusals, rather than found unusable at the first
    // checkpoint after the work (an evaluation writes none).
    if (world_rank == 0 && !eval_only && cfg.train().checkpoint_interval() > 0) {
      if (resume.empty() && !overwrite) sy::check_fresh_root(cfg.train().checkpoint_dir());
      sy::make_output_dir("train.checkpoint_dir", cfg.train().checkpoint_dir(), &made.dirs);
      sy::remove_stale_staging(cfg.train().checkpoint_dir());
    }
    // Without an interval only a stop writes a checkpoint, which must not
    // replace and prune another run's either; such a run is not refused (it
    // asked for no checkpoint), its stop writes none and says why.
    if (world_rank == 0 && !eval_only && cfg.train().checkpoint_interval() == 0 && resume.empty() && !overwrite)
      foreign_checkpoints = sy::checkpoints_held(cfg.train().checkpoint_dir());
    std::error_code ec;
    if (world_rank == 0 && !metrics_path.empty() && !std::filesystem::exists(metrics_path, ec)) made.metrics = metrics_path;
  });
  if (help) return 0;
  // Replicas must train the same model on the same data: one config, one build.
  if (world) {
    const std::string mismatch = sy::config_mismatch(*world, cfg, sy::code_version());
    if (!mismatch.empty()) throw sy::AgreedError(mismatch, 2);
  }
  // (Rank 0 looked; every rank writes its part of a checkpoint or none.)
  opts.checkpoint_on_stop = foreign_checkpoints.empty();
  if (world)
    opts.checkpoint_on_stop = world->all_reduce_sum(opts.checkpoint_on_stop ? 0.0 : 1.0, "checkpoint root") == 0;

  openblas_set_num_threads(threads);
  if (eval_only) opts.log = nullptr;
  // (An evaluation too ends at its next batch, agreed over the ranks.)
  opts.stop_requested = [] { return g_signal != 0; };
  install_stop_handlers();
  std::unique_ptr<sy::ParallelContext> par;
  std::unique_ptr<sy::Trainer> trainer;
  bool nccl = false;
  agreed([&] {
    if (world_size > 1) {
      // Each rank takes a GPU by its rank on its node. NCCL needs one GPU per
      // rank; ranks sharing a GPU move device tensors through MPI instead.
      const int gpus = sy::cuda_device_count();
      if (gpus > 0) opts.device = sy::node_rank_gpu(node.rank);
      const auto pb = cfg.parallel().backend();
      // (SY_NCCL_SHARED_GPU=1, for tests only: NCCL between ranks sharing a
      // GPU, each given its own NCCL_HOSTID, over sockets - unsupported by
      // NVIDIA; scripts/gpu_check.sh's NCCL fault run on its one GPU.)
      const bool on_gpu = cfg.backend() == switchyard::Config::CUDA,
                 own_gpu_here = gpus >= node.size || (gpus > 0 && std::getenv("SY_NCCL_SHARED_GPU"));
      // One answer on every rank: nodes may differ (2 ranks on 2 GPUs on one,
      // 2 on 1 GPU on another), and a rank building NCCL's communicator
      // while another builds MPI's would wait on each other's collectives.
      const bool own_gpu = world->all_reduce_sum(own_gpu_here ? 0.0 : 1.0, "GPUs per rank") == 0;
      if (pb == switchyard::ParallelConfig::NCCL && !own_gpu)
        throw sy::ConfigError(
            "parallel.backend = NCCL: " +
            (own_gpu_here ? std::string("ranks on another node share its GPUs")
                          : std::to_string(node.size) + " ranks on this node share " + std::to_string(gpus) + " GPU" +
                                (gpus == 1 ? "" : "s")) +
            "; NCCL needs one GPU per rank (use MPI, which stages through the host)");
      nccl = on_gpu && own_gpu &&
             (pb == switchyard::ParallelConfig::NCCL ||
              (pb == switchyard::ParallelConfig::AUTO && sy::comm::nccl_available()));
      std::unique_ptr<sy::comm::Communicator> world_comm;
      if (nccl) {
        sy::comm::MpiCommunicator bootstrap(MPI_COMM_WORLD);  // carries NCCL's unique id
        world_comm = sy::comm::make_nccl_communicator(bootstrap, opts.device, cfg.parallel().timeout_s());
      } else {
        auto mpi = std::make_unique<sy::comm::MpiCommunicator>(MPI_COMM_WORLD);
        mpi->set_ring_all_reduce(cfg.parallel().mpi_ring_all_reduce());
        world_comm = std::move(mpi);
      }
      par = sy::ParallelContext::create(std::move(world_comm), cfg.parallel().expert_parallel(),
                                        cfg.parallel().timeout_s());
      par->dedup_dispatch = cfg.parallel().dedup_dispatch();
      opts.par = par.get();
    }
    // AUTO resolves to the CPU until every op (attention included) has CUDA kernels.
    trainer = std::make_unique<sy::Trainer>(cfg, opts);
  });
  // What each rank derived from its own copy of the data (balanced hash
  // routing's map) must agree too: checked once every rank has its trainer.
  if (world && trainer->config().moe().hash_table_size() != cfg.moe().hash_table_size()) {
    const std::string mismatch = sy::hash_table_mismatch(*world, trainer->config());
    if (!mismatch.empty()) throw sy::AgreedError(mismatch, 2);
  }
  if (world_rank == 0) {
    if (trainer->device())
      std::cout << "switchyard: backend cuda (" << trainer->device()->name() << "), ";
    else
      std::cout << "switchyard: backend cpu (" << (cfg.backend() == switchyard::Config::AUTO ? "auto: " : "")
                << threads << " thread" << (threads > 1 ? "s" : "") << " per rank), ";
    std::cout << (cfg.precision() == switchyard::Config::BF16 ? "bf16 GEMMs (fp32 masters), " : "fp32, ");
    std::cout << world_size << " rank" << (world_size > 1 ? "s" : "");
    if (world_size > 1) std::cout << (nccl ? " (nccl" : " (mpi") << ", expert_parallel " << cfg.parallel().expert_parallel() << ")";
    std::cout << ", config " << source << std::endl;  // flushed: the first line, before stderr's progress
  }
  if (!checkpoint.empty() && !init_from.empty()) trainer->init_from(checkpoint);
  if (!checkpoint.empty() && init_from.empty()) trainer->restore(checkpoint, !eval_only);

  if (eval_only) {
    sy::EvalReport e;
    e.step = trainer->completed_steps();
    e.val_loss = trainer->evaluate();
    if (trainer->evaluation_stopped()) {
      if (world_rank == 0)
        std::cerr << "stopped by " << (g_signal == SIGINT ? "SIGINT" : g_signal == SIGTERM ? "SIGTERM" : "a signal to another rank")
                  << " during the evaluation of " << checkpoint << "\n";
      return kExitSignal;
    }
    e.moe = trainer->held_out_routing();
    e.depth = trainer->held_out_depth();
    if (world_rank == 0) {
      std::cout << "checkpoint " << checkpoint << "\n" << sy::eval_progress_line(e) << "\n";
      if (!metrics_path.empty()) {
        sy::MetricsWriter m(metrics_path, true);
        m.write(sy::eval_metrics_line(e));
        m.close();
      }
    }
    return 0;
  }

  const sy::TrainResult r = trainer->run();
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
      // On stderr: under mpirun, stdout may be full of progress lines that
      // mpirun, stopping too, no longer drains.
      if (world_rank == 0)
        std::cerr << "stopped by "
                  << (g_signal == SIGINT ? "SIGINT" : g_signal == SIGTERM ? "SIGTERM" : "a signal to another rank")
                  << " after step " << r.last_step << ": "
                  << (!r.checkpoint.empty()
                          ? "checkpoint " + r.checkpoint
                          : "no checkpoint: train.checkpoint_dir = " + cfg.train().checkpoint_dir() +
                                " holds another run's (" + foreign_checkpoints +
                                "), which it would replace and prune (--overwrite lets a run replace them)")
                  << "\n";
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
  return sy::run_tool([&] { return run(argc, argv, rank, size); }, {rank, size},
                       [](int code) { sy::comm::abort_job(code); });  // other ranks may be in a collective
}
