// scaling_sweep: how a model scales over rank counts, measured and projected.
//
//   build/bin/scaling_sweep --config configs/switch_tiny.pbtxt --ranks 1,2 --out docs/scaling
//
// For each mode and rank count N it launches `mpirun -np N scaling_sweep
// --worker ...` (experts sharded over all N ranks, parallel.expert_parallel = N):
//   weak:   fixed tokens per rank (global batch = per_rank_batch * N)
//   strong: fixed global batch (global_batch, split over N)
// and writes <out>.csv (ranks, tokens/s, step time split into compute /
// all-to-all / all-reduce, efficiency) and <out>.png (gnuplot), with
//   weak efficiency   = (tokens/s per rank at N) / (tokens/s at 1)
//   strong efficiency = T1 / (N * TN)
// Projection (runtime/scaling_model.h: an alpha-beta model of the links
// plus the experts' load imbalance): from the single-rank compute time, the
// bytes each rank sends and the routing, step time at N is
//   t = t_compute + t_imb + t_a2a + t_ar
//   t_compute = c1 (weak) or c1 / N (strong); c1 = 1-rank compute. Where a
//               CUDA run puts N ranks on fewer GPUs (the MPI path's several
//               ranks a GPU), the compute is measured instead: N independent
//               one-rank trainings at the point's per-rank batch, side by
//               side on the GPUs, no communication (--compute-basis
//               concurrent, the default there). Ranks sharing a GPU neither
//               take turns (c1 x ceil(N / GPUs): a launch-bound step leaves
//               the GPU idle for the others) nor run free (c1): what sharing
//               costs is the GPU's and its driver's, not the links', so it is
//               measured, and the model predicts what communication adds.
//   t_imb     = e x load_excess: e = the expert FFNs' share of the 1-rank
//               step (a profiled 1-rank run's op profile) times c1 (weak) or
//               c1 / N (strong); the excess from the kept assignments of the
//               same run's routers at each step, the experts in contiguous
//               blocks over the ranks (--no-imbalance: 0).
// The CPU runs check the model with link parameters measured by bench_comm.
//
// Each point runs --repeats times (default 3): the table and CSV give the
// medians, and the CSV the spread (step_s_min/max, efficiency_min/max from the
// extremes of both runs compared), the 1-minute load average before the point
// and the core count. A load average above the cores the sweep leaves free is
// warned about on stderr: on a busy machine the figures are not reproducible.
// Run as root, the inner mpirun gets OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1.
#include <cblas.h>
#include <mpi.h>

#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "comm/mpi_communicator.h"
#include "examples/cli.h"
#include "core/device.h"
#include "runtime/config.h"
#include "runtime/metrics.h"
#include "runtime/output_file.h"
#include "runtime/run_tool.h"
#include "runtime/scaling_model.h"
#include "runtime/trainer.h"

namespace {

// What one measurement reports (rank 0, maxima over ranks).
struct Measured {
  int ranks = 0;
  double tokens_per_s = 0, step_s = 0, compute_s = 0, a2a_s = 0, ar_s = 0;
  double exchanges = 0;       // all-to-alls of rows per step: 4 per MoE layer
  double bytes_per_exchange = 0;  // rows a rank sends in one: tokens * top_k * d_model * value bytes (mean)
  double dense_bytes = 0;     // dense gradients all-reduced per step
  double gathered_bytes = 0;  // values all-gathered after a sharded update (parallel.shard_optimizer)
  bool scattered = false;     // dense gradients reduce-scattered (parallel.reduce_scatter_grads)
};

// A step's kept shares (runtime/scaling_model.h) from the routers'
// statistics: each expert's share of its layer's assignments (the route's
// items times k: a depth-routed block's MoE layer routes only the tokens its
// block kept), clipped at the capacity's share. (A hard budget's drops are
// not taken off; padded expert buffers, where every expert's work is even,
// need expert_parallel 1: no sweep past one rank has them.)
void record_kept(sy::Transformer& model, sy::KeptShares& kept) {
  std::vector<std::vector<double>> step;
  for (const auto& [l, layer] : model.moe_layers()) {
    const sy::RoutingStats& st = layer->stats();
    const double assignments = static_cast<double>(layer->route().num_items * layer->route().k);
    const double cap = st.capacity > 0 && assignments > 0 ? static_cast<double>(st.capacity) / assignments : 1.0;
    std::vector<double> k;  // (shares of the assignments; capacity in rows)
    for (double share : st.load) k.push_back(std::min(share, cap));
    step.push_back(std::move(k));
  }
  if (!step.empty()) kept.push_back(std::move(step));
}

// independent: each rank trains alone (no ParallelContext, EP 1), side by
// side with the others: the compute term of ranks sharing a device.
// profile (one rank): the op profile's share of the step in the expert FFNs
// and the kept shares of every step, for the load-imbalance term.
int worker(const std::string& config, const std::vector<std::string>& sets, const std::string& result,
           bool independent, bool profile) {
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  openblas_set_num_threads(1);  // one core per rank
  sy::Config cfg = sy::load_config(config, sets);
  sy::TrainOptions opts;
  // A CUDA run: each rank the GPU of its rank on the node (as train_switch).
  if (const int gpu = sy::comm::node_local_gpu(MPI_COMM_WORLD); gpu >= 0) opts.device = gpu;
  std::unique_ptr<sy::ParallelContext> par;
  if (size > 1 && !independent) {
    auto world = std::make_unique<sy::comm::MpiCommunicator>(MPI_COMM_WORLD);
    world->set_ring_all_reduce(cfg.parallel().mpi_ring_all_reduce());
    par = sy::ParallelContext::create(std::move(world), cfg.parallel().expert_parallel(), cfg.parallel().timeout_s());
    par->dedup_dispatch = cfg.parallel().dedup_dispatch();
    opts.par = par.get();
  }
  sy::KeptShares kept;
  if (profile) {
    opts.op_profile_path = result + ".ops.json";
    // Before step s the routers hold step s - 1's statistics. (Not after the
    // run: it ends with an evaluation, whose routing has eval capacity and
    // no noise.)
    opts.before_step = [&](int64_t s, sy::Transformer& model) {
      if (s > 2) record_kept(model, kept);
    };
  }
  sy::Trainer trainer(cfg, opts);
  sy::TrainResult r = trainer.run();
  if (profile) {
    nlohmann::json ops;
    std::ifstream(opts.op_profile_path) >> ops;
    std::remove(opts.op_profile_path.c_str());
    double expert_ms = 0;  // (the expert FFNs: the work a rank's received rows cost)
    for (const auto& row : ops["ops"])
      if (row["op"] == "expert_ffn_forward" || row["op"] == "expert_ffn_backward")
        expert_ms += row["ms_per_step"].get<double>();
    const double step_ms = ops["step_ms"];
    const nlohmann::json j = {{"expert_share", step_ms > 0 ? expert_ms / step_ms : 0.0}, {"kept", kept}};
    std::ofstream(result) << j.dump() << "\n";
    return 0;
  }
  // The slowest rank sets the pace: maxima over ranks.
  double v[3] = {r.step_s, r.all_to_all_s, r.all_reduce_s}, mx[3];
  MPI_Allreduce(v, mx, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank != 0) return 0;
  const double n = static_cast<double>(r.timed_steps);
  const double tokens = static_cast<double>(cfg.train().batch()) * cfg.model().seq_len();
  int64_t dense = 0;
  for (sy::Param* p : trainer.model().params().all())
    if (!p->expert()) dense += p->value.numel();
  const double moe_layers = static_cast<double>(trainer.model().moe_layers().size());
  // Four exchanges a MoE layer and step: the dispatched rows and the
  // gradients of the expert outputs (bf16 in bf16 precision: 2 bytes a
  // value), the expert outputs back and the gradients of the dispatched rows
  // (f32); the model takes their mean size.
  // With parallel.dedup_dispatch the dispatch direction sends a row per
  // (token, rank), which the config does not say: the mean of what this
  // rank measured over the timed steps instead.
  const double value_bytes = cfg.precision() == switchyard::Config::BF16 ? (2 * 2.0 + 2 * 4.0) / 4 : 4.0;
  const double exchanges = 4.0 * moe_layers;
  const double bytes_per_exchange = cfg.parallel().dedup_dispatch() && n > 0 && exchanges > 0
                                        ? r.all_to_all_bytes / n / exchanges
                                        : tokens / size * cfg.moe().top_k() * cfg.model().d_model() * value_bytes;
  nlohmann::json j = {{"ranks", size}, {"step_s", mx[0] / n}, {"a2a_s", mx[1] / n}, {"ar_s", mx[2] / n},
                      {"exchanges", exchanges},
                      {"bytes_per_exchange", bytes_per_exchange},
                      {"dense_bytes", 4.0 * dense},
                      // (the experts, sharded over all N ranks, have one replica: only the dense values)
                      {"gathered_bytes", cfg.parallel().shard_optimizer() ? 4.0 * dense : 0.0},
                      {"scattered", cfg.parallel().shard_optimizer() && cfg.parallel().reduce_scatter_grads()},
                      {"tokens_per_s", tokens / (mx[0] / n)}};
  std::ofstream(result) << j.dump() << "\n";
  return 0;
}

// Step time at N ranks: the compute term (see the top) plus what the links
// add for the exchanges and dense gradients of `one`'s config.
double project(const Measured& one, int N, bool weak, const sy::Link& L, double compute) {
  const double S = weak ? one.bytes_per_exchange : one.bytes_per_exchange / N;
  return compute + sy::link_seconds({one.exchanges, S, one.dense_bytes, one.gathered_bytes, one.scattered}, N, L);
}

// One mpirun of N workers (`flag`: --independent, --profile or none),
// train.batch = batch (the global batch; with --independent each rank's
// own); what rank 0 wrote.
// The sweep's progress over its mpirun launches (rate and ETA on stderr, the
// table on stdout): set by main once it knows how many there will be.
sy::ProgressLine* g_progress = nullptr;
int64_t g_launched = 0;

nlohmann::json launch(const char* argv0, const std::string& config, const std::vector<std::string>& sets, int N,
                      int batch, int steps, const std::string& tag, const std::string& flag) {
  const std::string res = tag + ".json";
  // (each path and value one shell word, whatever it holds)
  auto q = [](const std::string& w) {
    std::string o = "'";
    for (const char c : w) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return o + "'";
  };
  std::ostringstream cmd;
  // (--bind-to none: OpenMPI binds each of 2 or fewer ranks to one core,
  // where a rank's host thread and its gradient reducer's thread would
  // share it, and the side-by-side runs have no reducer thread to share it)
  cmd << "mpirun --oversubscribe --bind-to none -np " << N << " " << q(argv0) << " --worker --result " << q(res)
      << " --config " << q(config) << " --steps " << steps << (flag.empty() ? "" : " " + flag);
  for (const auto& s : sets) cmd << " --set " << q(s);
  cmd << " --set train.batch=" << batch << " --set parallel.expert_parallel=" << (flag == "--independent" ? 1 : N)
      << " > " << q(tag + ".log") << " 2>&1";
  if (std::system(cmd.str().c_str()) != 0) throw sy::Error(cmd.str() + " failed; see " + tag + ".log");
  nlohmann::json j;
  std::ifstream(res) >> j;
  std::remove(res.c_str());
  std::remove((tag + ".log").c_str());
  if (g_progress) g_progress->done(++g_launched);
  return j;
}

Measured run_one(const char* argv0, const std::string& config, const std::vector<std::string>& sets, int N,
                 int batch, int steps, const std::string& tag, bool independent) {
  const nlohmann::json j = launch(argv0, config, sets, N, batch, steps, tag, independent ? "--independent" : "");
  Measured x;
  x.ranks = N;
  x.step_s = j["step_s"], x.a2a_s = j["a2a_s"], x.ar_s = j["ar_s"], x.tokens_per_s = j["tokens_per_s"];
  x.exchanges = j["exchanges"], x.bytes_per_exchange = j["bytes_per_exchange"], x.dense_bytes = j["dense_bytes"];
  x.gathered_bytes = j["gathered_bytes"];
  x.scattered = j["scattered"];
  x.compute_s = x.step_s - x.a2a_s - x.ar_s;
  return x;
}

// The load-imbalance term's inputs (see the top), from a profiled 1-rank run.
struct Imbalance {
  double expert_share = 0;  // the expert FFNs' share of the step
  sy::KeptShares kept;
  double excess(int N) const { return sy::load_excess(kept, N); }
};

Imbalance run_profile(const char* argv0, const std::string& config, const std::vector<std::string>& sets, int batch,
                      int steps, const std::string& tag) {
  const nlohmann::json j = launch(argv0, config, sets, 1, batch, steps, tag, "--profile");
  Imbalance m;
  m.expert_share = j["expert_share"];
  m.kept = j["kept"].get<sy::KeptShares>();
  return m;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A point measured `repeats` times: medians, and the spread of the step time.
struct Point {
  Measured median;
  double step_min = 0, step_max = 0;
};

Point run_point(const char* argv0, const std::string& config, const std::vector<std::string>& sets, int N, int batch,
                int steps, const std::string& tag, int repeats, bool independent = false) {
  std::vector<Measured> runs;
  for (int r = 0; r < repeats; ++r) runs.push_back(run_one(argv0, config, sets, N, batch, steps, tag, independent));
  auto med = [&](double Measured::*f) {
    std::vector<double> v;
    for (const Measured& m : runs) v.push_back(m.*f);
    return median(v);
  };
  Point p;
  p.median = runs[0];
  p.median.step_s = med(&Measured::step_s);
  p.median.a2a_s = med(&Measured::a2a_s);
  p.median.ar_s = med(&Measured::ar_s);
  p.median.compute_s = med(&Measured::compute_s);
  p.median.tokens_per_s = med(&Measured::tokens_per_s);
  p.step_min = p.step_max = runs[0].step_s;
  for (const Measured& m : runs) p.step_min = std::min(p.step_min, m.step_s), p.step_max = std::max(p.step_max, m.step_s);
  return p;
}

// The 1-minute load average (first field of /proc/loadavg); -1 when unknown.
double load_average(const std::string& file) {
  double l = -1;
  std::ifstream(file) >> l;
  return l;
}

// (Without gnuplot - the GPU machine has none - no plot and a note: popen
// succeeds there anyway, its shell exits, and the script written into the
// pipe then ended this process by SIGPIPE, the projection unprinted.)
bool plot(const std::string& out) {  // true: out.png written
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::fprintf(stderr, "note: no gnuplot: %s.png not drawn\n", out.c_str());
    return false;
  }
  struct sigaction ignore {}, before {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ignore, &before);  // (a gnuplot that exits early: its write fails, not this process)
  std::FILE* gp = popen("gnuplot", "w");
  if (!gp) {
    sigaction(SIGPIPE, &before, nullptr);
    return false;
  }
  std::fprintf(gp,
               "set terminal pngcairo noenhanced size 1100,420 font ',10'\n"
               "set output '%s.png'\nset datafile separator ','\n"
               "set multiplot layout 1,2 title 'scaling_sweep (CPU, MPI): measured and projected'\n"
               "set xlabel 'ranks'; set xtics 1; set grid; set key top left\n"
               "set title 'step time split (ms)'; set ylabel 'ms'; set style data linespoints\n"
               "plot '< grep ^weak %s.csv' u 2:($4*1000) t 'weak: step', '' u 2:($5*1000) t 'weak: compute', "
               "'' u 2:($6*1000) t 'weak: all-to-all', '' u 2:($7*1000) t 'weak: all-reduce', "
               "'' u 2:($9*1000) t 'weak: projected step' dt 2, "
               "'< grep ^strong %s.csv' u 2:($4*1000) t 'strong: step', '' u 2:($9*1000) t 'strong: projected' dt 2\n"
               "set title 'efficiency'; set ylabel 'efficiency'; set yrange [0:1.2]\n"
               "plot '< grep ^weak %s.csv' u 2:8 t 'weak', '< grep ^strong %s.csv' u 2:8 t 'strong'\n"
               "unset multiplot\n",
               out.c_str(), out.c_str(), out.c_str(), out.c_str(), out.c_str());
  const bool drawn = pclose(gp) == 0;
  sigaction(SIGPIPE, &before, nullptr);
  return drawn;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Scaling sweep: weak and strong scaling over rank counts, and a projection"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string config = "configs/switch_tiny.pbtxt", out = "docs/scaling", ranks_arg = "1,2", result;
  std::vector<std::string> sets;
  std::vector<int> project_ranks = {8, 16, 64, 512};
  int steps = 30, per_rank_batch = 8, global_batch = 16;
  double compute_s = 0, latency_us = 1.2, gpu_latency_us = 10;
  sy::Link cpu{0, 12.0, 12.0, 1 << 30}, gpu{0, 370.0, 48.0, 8};
  bool is_worker = false, independent = false, profile = false, no_imbalance = false;
  int repeats = 3;
  std::string compute_basis = "auto";
  std::string loadavg_file = "/proc/loadavg";
  app.add_flag("--worker", is_worker, "internal: one measurement under mpirun");
  app.add_option("--result", result, "internal: where the worker writes its JSON");
  app.add_flag("--independent", independent, "internal: each worker trains alone (the compute term's runs)");
  app.add_flag("--profile", profile, "internal: one worker, op profile and routing (the imbalance term's run)");
  app.add_flag("--no-imbalance", no_imbalance,
               "leave the experts' load imbalance out of the model (no profiled 1-rank run per mode)");
  app.add_option("--compute-basis", compute_basis,
                 "the model's compute term at N ranks: single (c1, or c1 / N strong), concurrent (measured: N "
                 "independent one-rank runs side by side), auto (concurrent where CUDA ranks share a GPU)")
      ->check(CLI::IsMember({"auto", "single", "concurrent"}));
  app.add_option("--config", config, "model config");
  app.add_option("--set", sets, "config overrides");
  app.add_option("--ranks", ranks_arg, "comma-separated rank counts");
  app.add_option("--steps", steps, "steps per measurement (the first 2 are warm-up)")->check(CLI::Range(4, 1000000));
  app.add_option("--repeats", repeats, "runs per point; the CSV gives their median and spread")->check(CLI::Range(1, 1000));
  app.add_option("--loadavg-file", loadavg_file, "where the load average is read (testing)");
  app.add_option("--per-rank-batch", per_rank_batch, "weak scaling: sequences per rank")->check(CLI::Range(1, 1 << 20));
  app.add_option("--global-batch", global_batch, "strong scaling: sequences in the global batch")
      ->check(CLI::Range(1, 1 << 20));
  bool overwrite = false;
  app.add_option("--out", out, "output prefix: <out>.csv, <out>.png, <out>_projection.csv");
  app.add_flag("--overwrite", overwrite, "replace existing output files");
  app.add_option("--project", project_ranks, "rank counts to project to with the GPU link parameters")
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--compute-s", compute_s, "single-rank compute seconds per step for the GPU projection (default: the measured CPU one)")
      ->check(sy::FiniteRange(0, 1e6));
  app.add_option("--cpu-link-gbs", cpu.busbw_gbs, "MPI all-to-all bus bandwidth here (bench_comm, ~1 MB)")
      ->check(sy::FiniteRange(1e-6, 1e9));
  app.add_option("--cpu-link-latency-us", latency_us, "MPI latency here (bench_comm, 1 KB)")
      ->check(sy::FiniteRange(0, 1e9));
  app.add_option("--gpu-link-gbs", gpu.busbw_gbs, "all-to-all bus bandwidth within an H100 NVLink node")
      ->check(sy::FiniteRange(1e-6, 1e9));
  app.add_option("--gpu-link-latency-us", gpu_latency_us, "collective latency within a node")
      ->check(sy::FiniteRange(0, 1e9));
  app.add_option("--node-link-gbs", gpu.node_gbs, "per-node bandwidth across nodes (400 Gb/s InfiniBand)")
      ->check(sy::FiniteRange(1e-6, 1e9));
  app.add_option("--gpus-per-node", gpu.per_node, "GPUs per node")->check(CLI::Range(1, 1 << 16));
  if (const int rc = sy::parse_options(app, argc, argv); rc >= 0) return rc;
  cpu.alpha_s = latency_us * 1e-6;
  gpu.alpha_s = gpu_latency_us * 1e-6;

  return sy::run_tool([&] {
    std::vector<std::string> base = sets;
    for (const char* s : {"train.warmup_steps=1", "train.eval_interval=0", "train.log_interval=100000000"})
      base.push_back(s);
    base.push_back("train.steps=" + std::to_string(steps));
    if (is_worker) {
      // Only workers are MPI processes: a driver that had initialised MPI
      // would hand its own MPI environment to the mpirun it launches.
      sy::comm::MpiSession mpi(&argc, &argv);
      return worker(config, base, result, independent, profile);
    }

    std::vector<int> ranks;
    std::stringstream ss(ranks_arg);
    for (std::string r; std::getline(ss, r, ',');) {
      double v = 0;
      if (!sy::parse_number(r, v) || v != std::floor(v) || v < 1 || v > 4096)
        throw sy::ConfigError("--ranks " + ranks_arg + ": '" + r + "' is not a rank count (comma-separated integers in [1, 4096])");
      ranks.push_back(static_cast<int>(v));
    }
    if (ranks.empty() || ranks[0] != 1) throw sy::ConfigError("--ranks " + ranks_arg + ": must start with 1 (the baseline)");
    // (said before any run, not after the weak points: each strong point
    // splits the one global batch over its ranks)
    for (const int N : ranks)
      if (global_batch % N != 0)
        throw sy::ConfigError("--global-batch " + std::to_string(global_batch) + ": must split evenly over --ranks " +
                              std::to_string(N) + " (strong scaling)");
    {
      std::error_code ec;
      if (out.empty() || out.back() == '/' || std::filesystem::is_directory(out, ec))
        throw sy::ConfigError("--out " + out + ": names a directory; give a file prefix such as " +
                              (out.empty() ? std::string("scaling") : out + (out.back() == '/' ? "" : "/") + "scaling"));
    }
    for (const char* suffix : {".csv", ".png", "_projection.csv"})
      sy::check_output_path("--out", out + suffix, {{"the config file", config}}, overwrite);
    // OpenMPI's mpirun refuses to run as root without its consent.
    if (geteuid() == 0) {
      setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
      setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    }
    // A CUDA run on fewer GPUs than ranks shares them: the model's compute
    // term is then measured (see the top).
    const bool on_gpu = sy::load_config(config, base).backend() == switchyard::Config::CUDA;
    const int gpus = on_gpu ? std::max(1, sy::cuda_device_count()) : 0;
    auto concurrent = [&](int N) {
      return N > 1 && (compute_basis == "concurrent" || (compute_basis == "auto" && on_gpu && N > gpus));
    };
    if (on_gpu)
      std::printf("CUDA: %d GPU%s; at more ranks than that the model's compute is measured: N independent one-rank "
                  "runs side by side (--compute-basis %s)\n",
                  gpus, gpus == 1 ? "" : "s", compute_basis.c_str());
    const int cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
    const int most = *std::max_element(ranks.begin(), ranks.end());
    const double load = load_average(loadavg_file);
    if (load > std::max(0, cores - most))
      std::fprintf(stderr,
                   "warning: load average %.2f before the sweep, while its %d ranks will need %d of the %d cores "
                   "(%d left idle): other work will share them and timings will vary (see the spread columns of "
                   "%s.csv)\n",
                   load, most, std::min(most, cores), cores, std::max(0, cores - most), out.c_str());
    std::ofstream csv(out + ".csv");
    csv << "mode,ranks,tokens_per_s,step_s,compute_s,all_to_all_s,all_reduce_s,efficiency,projected_step_s,"
           "projection_error,repeats,step_s_min,step_s_max,efficiency_min,efficiency_max,loadavg_1m,cores,"
           "model_compute_s,compute_basis,expert_share,load_imbalance,imbalance_s\n";
    std::printf("%d run%s per point, medians; load average %.2f on %d cores\n", repeats, repeats > 1 ? "s" : "",
                load, cores);
    std::printf("%-6s %5s %10s %9s %15s %9s %9s %9s %6s %13s %9s %7s %7s %11s\n", "mode", "ranks", "tokens/s",
                "step_ms", "step_ms_range", "compute", "all2all", "allreduce", "eff", "eff_range", "proj_ms", "err",
                "imb_ms", "model_c_ms");
    // Every launch the loops below make: each point's repeats, the compute
    // term's side-by-side repeats, one profiled run per mode.
    int64_t launches = 0;
    for (int m = 0; m < 2; ++m)
      for (int N : ranks) launches += repeats * (concurrent(N) ? 2 : 1) + (N == 1 && !no_imbalance ? 1 : 0);
    sy::ProgressLine progress(&std::cerr, "sweep", launches, 0, 0, "runs");
    g_progress = &progress;
    Measured weak1;
    Imbalance weak_imb;
    for (const char* m : {"weak", "strong"}) {
      const bool weak = std::string(m) == "weak";
      Measured one;
      Point one_point;
      Imbalance imb;
      for (int N : ranks) {
        const int batch = weak ? per_rank_batch * N : global_batch;
        const double point_load = load_average(loadavg_file);
        Point pt = run_point(argv[0], config, base, N, batch, steps, out + "_" + m + std::to_string(N), repeats);
        const Measured& x = pt.median;
        if (N == 1) one = x, one_point = pt;
        // The imbalance term's profiled run, at the 1-rank point's batch.
        if (N == 1 && !no_imbalance)
          imb = run_profile(argv[0], config, base, batch, steps, out + "_" + m + "1_profile");
        if (N == 1 && weak) weak_imb = imb;
        const double eff = N == 1 ? 1.0 : weak ? (x.tokens_per_s / N) / one.tokens_per_s : one.step_s / (N * x.step_s);
        // Both efficiencies are T1 / TN (weak) or T1 / (N TN) (strong): the
        // extremes pair the fastest and slowest runs of the two points.
        const double scale = N == 1 ? 1.0 : weak ? 1.0 : 1.0 / N;
        const double eff_min = N == 1 ? 1.0 : scale * one_point.step_min / pt.step_max;
        const double eff_max = N == 1 ? 1.0 : scale * one_point.step_max / pt.step_min;
        // The model at N uses the exchange count and bytes of the run at N's
        // config, the single-rank compute time, and the measured links.
        Measured basis = one;
        basis.exchanges = x.exchanges;
        basis.bytes_per_exchange = x.bytes_per_exchange * (weak ? 1 : N);
        // The compute term: c1 (c1 / N), or measured at N side by side.
        double model_compute = N == 1 ? one.step_s : weak ? one.compute_s : one.compute_s / N;
        if (concurrent(N)) {
          if (batch % N != 0)
            throw sy::ConfigError("--compute-basis concurrent: a batch of " + std::to_string(batch) + " over " +
                                  std::to_string(N) + " ranks (it must divide)");
          model_compute = run_point(argv[0], config, base, N, batch / N, steps,
                                    out + "_" + m + std::to_string(N) + "_compute", repeats, true)
                              .median.step_s;
        }
        // The expert FFNs' time a rank (balanced) and what the most loaded rank adds.
        const double experts_s = imb.expert_share * (weak ? one.step_s : one.step_s / N), excess = imb.excess(N);
        const double imbalance_s = N == 1 ? 0 : experts_s * excess;
        const double proj = N == 1 ? one.step_s : project(basis, N, weak, cpu, model_compute + imbalance_s);
        const double err = (proj - x.step_s) / x.step_s;
        char range[32], eff_range[32];
        std::snprintf(range, sizeof range, "%.2f-%.2f", pt.step_min * 1e3, pt.step_max * 1e3);
        std::snprintf(eff_range, sizeof eff_range, "%.3f-%.3f", eff_min, eff_max);
        std::printf("%-6s %5d %10.0f %9.2f %15s %9.2f %9.2f %9.2f %6.3f %13s %9.2f %+6.1f%% %7.2f %9.2f%s\n", m, N,
                    x.tokens_per_s, x.step_s * 1e3, range, x.compute_s * 1e3, x.a2a_s * 1e3, x.ar_s * 1e3, eff,
                    eff_range, proj * 1e3, 100 * err, imbalance_s * 1e3, model_compute * 1e3,
                    concurrent(N) ? " m" : "");
        csv << m << "," << N << "," << x.tokens_per_s << "," << x.step_s << "," << x.compute_s << "," << x.a2a_s
            << "," << x.ar_s << "," << eff << "," << proj << "," << err << "," << repeats << "," << pt.step_min << ","
            << pt.step_max << "," << eff_min << "," << eff_max << "," << point_load << "," << cores << ","
            << model_compute << "," << (concurrent(N) ? "concurrent" : "single") << "," << imb.expert_share << ","
            << 1 + excess << "," << imbalance_s << "\n";
        if (weak && N == ranks.back() && N > 1) weak1 = x, weak1.compute_s = one.compute_s;
        if (weak && N == ranks.back() && N == 1) weak1 = x;
      }
    }
    csv.close();
    std::printf("(model_c_ms: the model's compute term; m: measured as N independent runs side by side; imb_ms: "
                "what the most loaded rank's experts add to it)\n");
    std::fflush(stdout);  // (the table out before the plot's child process)
    const bool plotted = plot(out);

    // Projection to GPU clusters, weak scaling, experts over all ranks.
    Measured g = weak1;
    if (compute_s > 0) g.compute_s = compute_s;
    if (g.exchanges == 0) g.exchanges = 4;  // a single-rank sweep: assume one MoE layer
    std::ofstream pcsv(out + "_projection.csv");
    pcsv << "ranks,step_s,efficiency,load_imbalance,imbalance_s\n";
    // (the experts' share of the step and their loads as the 1-rank weak run
    // measured them, also where --compute-s gives another machine's step)
    const double experts_s = weak_imb.expert_share * g.compute_s;
    std::printf("\nprojection (weak scaling; compute %.3f ms/step, %.1f%% of it in the experts; %.0f exchanges of %.0f "
                "KiB per rank; %.2f MiB dense gradients%s; links: %.0f GB/s in a node of %d, %.0f GB/s per node "
                "across):\n",
                g.compute_s * 1e3, 100 * weak_imb.expert_share, g.exchanges, g.bytes_per_exchange / 1024,
                g.dense_bytes / (1 << 20),
                g.scattered             ? " reduce-scattered, their values all-gathered (parallel.shard_optimizer, "
                                          "reduce_scatter_grads)"
                : g.gathered_bytes > 0 ? ", their values all-gathered (parallel.shard_optimizer)"
                                       : "",
                gpu.busbw_gbs,
                gpu.per_node, gpu.node_gbs);
    for (int N : project_ranks) {
      const double excess = weak_imb.excess(N), imbalance_s = experts_s * excess;
      const double t = project(g, N, true, gpu, g.compute_s + imbalance_s);
      std::printf("  %5d ranks: step %8.3f ms, efficiency %.3f (load imbalance %.3f: %.3f ms)\n", N, t * 1e3,
                  g.compute_s / t, 1 + excess, imbalance_s * 1e3);
      pcsv << N << "," << t << "," << g.compute_s / t << "," << 1 + excess << "," << imbalance_s << "\n";
    }
    std::printf("wrote %s.csv %s%s_projection.csv\n", out.c_str(), plotted ? (out + ".png ").c_str() : "",
                out.c_str());
    return 0;
  });
}
