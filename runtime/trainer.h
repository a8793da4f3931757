// The training loop: data, model, AdamW with warm-up + cosine schedule,
// gradient clipping, periodic evaluation, progress lines and metrics.
//
//   run():      step() for train.steps steps, evaluating and logging as configured
//   step():     one optimizer step: forward and backward on this rank's slice
//               of the global batch, gradient all-reduce, clipping, AdamW
//   evaluate(): validation loss (and held-out routing) on fixed batches
//
// Checkpoints (runtime/checkpoint.h): every train.checkpoint_interval steps,
// after the last step, and when a stop is requested (a signal); restore()
// resumes from one. Non-finite values: a step whose loss or gradient norm is
// NaN or infinite is skipped (gradients zeroed; no parameter, optimizer or
// routing-state update; the data position still advances); after
// train.max_bad_steps in a row run() stops and names the step and the first
// part of the model whose output was non-finite.
#pragma once
#include <deque>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "core/device_runtime.h"
#include "core/op_profile.h"
#include "ops/adamw.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"
#include "runtime/grad_reducer.h"
#include "runtime/model.h"
#include "runtime/parallel.h"
#include "runtime/step_metrics.h"
#include "runtime/training_data.h"

namespace sy {

struct TrainOptions {
  std::string metrics_path;  // JSONL; empty for none (only rank 0 writes)
  std::ostream* log = nullptr;  // progress lines; null for silence (only rank 0 prints)
  ParallelContext* par = nullptr;  // several ranks; null for one
  int device = 0;  // backend CUDA: this rank's GPU (its node-local rank modulo the GPUs)
  // Called on every rank before each step (testing failure handling:
  // train_switch's --inject-fault throws, hangs, exits or poisons a parameter
  // from here).
  std::function<void(int64_t step, Transformer& model)> before_step;
  // Polled on every rank after each step (has a signal arrived?). When it is
  // true on any rank, every rank stops after the same step (the flag is
  // summed over the world), writes a checkpoint (checkpoint_on_stop) and
  // run() returns Stop::signal.
  std::function<bool()> stop_requested;
  // Whether a stop writes its checkpoint when no interval makes the step's
  // due (false: train.checkpoint_interval 0 in a root holding another run's
  // checkpoints, which a stop's would replace and prune; train_switch). The
  // same on every rank.
  bool checkpoint_on_stop = true;
  // An evaluation running longer than progress_after_s prints a progress line
  // (batches, rate, ETA) every progress_every_s seconds.
  double progress_after_s = 5, progress_every_s = 10;
  // Non-empty: every op's time in the steps after the first two (core/op_profile.h),
  // as a table after the run (log) and as JSON at this path (rank 0). Slows the steps.
  std::string op_profile_path;
  // > 0: only the last op_profile_steps steps are profiled, so the run's
  // earlier logged intervals measure unprofiled speed (one run for both).
  int64_t op_profile_steps = 0;
};

struct StepResult {
  float loss = 0;       // mean over all ranks
  float grad_norm = 0;  // before clipping
  float lr = 0;
  double seconds = 0, all_reduce_s = 0, all_to_all_s = 0, all_to_all_bytes = 0;
  double all_reduce_exposed_s = 0;  // the part of all_reduce_s backward did not hide
  double share_values_s = 0;  // parallel.shard_optimizer: the all-gathers of the updated values
  double flops = 0;  // this rank's forward + backward FLOPs, every micro-batch's
  bool skipped = false;  // non-finite loss or gradient norm: no update
};

struct TrainResult {
  enum class Stop { done, signal, nonfinite };
  Stop stop = Stop::done;
  int64_t last_step = 0;       // the last step run
  std::string checkpoint;      // the last checkpoint written, if any
  std::string message;         // Stop::nonfinite: one line naming the step and the first non-finite part
  int64_t bad_steps = 0;       // steps skipped, in all (a resumed run counts the checkpoint's too)
  float first_loss = 0, final_loss = 0, final_val_loss = 0;
  std::vector<float> losses;  // every step's training loss (mean over all ranks), from the first step run
  // Timing over the steps after the first two (warm-up), this rank:
  int64_t timed_steps = 0;
  double step_s = 0, all_to_all_s = 0, all_reduce_s = 0, all_reduce_exposed_s = 0;
  double all_to_all_bytes = 0;  // bytes this rank sent in MoE exchanges
  double tokens_per_s = 0;
};

// Learning rate at `step` (1-based): linear warm-up to lr, cosine to min_lr.
float learning_rate(const switchyard::TrainConfig& t, int64_t step);

class Trainer {
 public:
  Trainer(const Config& cfg, TrainOptions opts);
  ~Trainer();
  // Resumes from a checkpoint directory before run() (collective): weights,
  // with `optimizer` the AdamW state, the step, the data position and the
  // routing state. The metrics file is then appended to.
  void restore(const std::string& dir, bool optimizer = true);
  // A new run from another run's weights before run() (collective;
  // runtime/checkpoint.h, init_from_checkpoint): the same model's, or a
  // dense model's upcycled into this one's experts. The step, the optimizer
  // and the metrics start afresh; the data stream goes on from the source's
  // position. With balanced hash routing the config must carry the
  // source's table (adopt_hash_table before the Trainer is made), or a table
  // made from other data is refused.
  void init_from(const std::string& dir);
  // Where the weights started (empty checkpoint: a random init).
  const RunOrigin& origin() const { return origin_; }
  TrainResult run();
  StepResult step(int64_t step);
  // Writes a checkpoint of the state after the last step (collective);
  // returns its directory.
  std::string write_checkpoint();
  // What the batches are drawn from, counted ("train 117068 tokens in 1
  // shard, val 13007 tokens in 1 shard"; bytes for byte-level data): kept in
  // checkpoints, so a run resumed on other data says so.
  std::string data_summary() const;
  // Mean validation loss over eval_batches fixed batches. A stop request
  // (SIGTERM, SIGINT: TrainOptions::stop_requested), agreed over the ranks
  // before each batch, cuts it short: NaN, and evaluation_stopped().
  float evaluate();
  bool evaluation_stopped() const { return eval_stopped_; }
  // Per MoE layer, the expert load of the last evaluate() (empty for a dense model).
  const std::vector<HeldOutRouting>& held_out_routing() const { return held_out_; }
  // Per depth-routed block, the fraction of tokens it processed in the last evaluate().
  const std::vector<std::pair<int, double>>& held_out_depth() const { return held_out_depth_; }
  int64_t completed_steps() const { return step_; }
  Transformer& model() { return model_; }
  // The run's config: the one given, with what training derives from the
  // data (moe.hash_table, balanced hash routing's map).
  const Config& config() const { return cfg_; }
  // The GPU the model runs on (backend CUDA), or null on the CPU.
  DeviceRuntime* device() { return device_.get(); }

 private:
  Config cfg_;
  TrainOptions opts_;
  // backend CUDA: the device runtime that owns the stream, the allocator and
  // the cuBLAS handles; the model's tensors live there and each step's batch
  // goes host -> device once. AUTO stays on the CPU until every op (attention
  // included) has CUDA kernels.
  std::unique_ptr<DeviceRuntime> device_;
  Ctx& ctx_;
  TrainingData data_;
  Transformer model_;
  WindowSampler train_, val_, warmup_;
  void calibrate_if_needed();
  int rank_ = 0, world_ = 1;
  std::vector<HeldOutRouting> held_out_;
  double held_out_compute_ = 0;  // mean compute_fraction over the last validation pass
  std::unique_ptr<GradientReducer> reducer_;  // several ranks only
  // parallel.reduce_scatter_grads where the moments are sharded: each rank
  // holds the reduced gradients of its own part only.
  bool scattered_grads() { return cfg_.parallel().reduce_scatter_grads() && model_.params().moments_sharded(); }
  std::vector<std::pair<int, double>> held_out_depth_;
  // Counters a checkpoint carries (runtime/checkpoint.h, TrainState).
  int64_t step_ = 0, optimizer_step_ = 0, tokens_seen_ = 0, bad_steps_ = 0;
  bool eval_stopped_ = false;  // the last evaluate() was cut short by a stop request
  int64_t consecutive_bad_ = 0;
  std::string restored_from_;  // empty: a fresh run
  std::string restored_data_;  // the checkpoint's data_summary() (empty: an older checkpoint)
  double restored_seconds_ = 0;  // the checkpoint's train_seconds: what this run's elapsed_s adds to its own
  double run_start_s_ = -1;      // run()'s start (steady clock), for the checkpoints it writes
  RunOrigin origin_;           // init_from's, or a restored checkpoint's
  Batch micro_batch(const Batch& slice, int m, int n) const;
  Batch step_slice_;           // this rank's slice of the last step's batch
  Batch last_batch_;           // its last micro-batch (the slice itself with one)
  std::string diagnose_nonfinite(int64_t step, const StepResult& r);
  bool stop_agreed();
  std::unique_ptr<OpProfiler> profiler_;  // opts_.op_profile_path set; ctx_.profiler points at it
  // AdamW's tensors: views of the arenas over this rank's elements
  // (runtime/optimizer_shard.h owned_update), made at the first update.
  std::deque<Tensor> update_views_;
  std::vector<ops::AdamWParam> update_;
  void report_op_profile();
};

}  // namespace sy
