// The training loop: data, model, AdamW with warm-up + cosine schedule,
// gradient clipping, periodic evaluation, progress lines and metrics.
//
//   run():      step() for train.steps steps, evaluating and logging as configured
//   step():     one optimizer step: forward and backward on this rank's slice
//               of the global batch, gradient all-reduce, clipping, AdamW
//   evaluate(): validation loss (and held-out routing) on fixed batches
#pragma once
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "core/device_runtime.h"
#include "runtime/config.h"
#include "runtime/grad_reducer.h"
#include "runtime/model.h"
#include "runtime/parallel.h"
#include "runtime/step_metrics.h"

namespace sy {

struct TrainOptions {
  std::string metrics_path;  // JSONL; empty for none (only rank 0 writes)
  std::ostream* log = nullptr;  // progress lines; null for silence (only rank 0 prints)
  ParallelContext* par = nullptr;  // several ranks; null for one
  // Called on every rank before each step (testing failure handling:
  // train_switch's --inject-fault throws, hangs or exits from here).
  std::function<void(int64_t step)> before_step;
  // An evaluation running longer than progress_after_s prints a progress line
  // (batches, rate, ETA) every progress_every_s seconds.
  double progress_after_s = 5, progress_every_s = 10;
};

struct StepResult {
  float loss = 0;       // mean over all ranks
  float grad_norm = 0;  // before clipping
  float lr = 0;
  double seconds = 0, all_reduce_s = 0, all_to_all_s = 0, all_to_all_bytes = 0;
  double all_reduce_exposed_s = 0;  // the part of all_reduce_s backward did not hide
};

struct TrainResult {
  float first_loss = 0, final_loss = 0, final_val_loss = 0;
  std::vector<float> losses;  // every step's training loss (mean over all ranks)
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
  TrainResult run();
  StepResult step(int64_t step);
  float evaluate();  // mean validation loss over eval_batches fixed batches
  // Per MoE layer, the expert load of the last evaluate() (empty for a dense model).
  const std::vector<HeldOutRouting>& held_out_routing() const { return held_out_; }
  Transformer& model() { return model_; }
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
  Dataset data_;
  Transformer model_;
  WindowSampler train_, val_, warmup_;
  int rank_ = 0, world_ = 1;
  std::vector<HeldOutRouting> held_out_;
  double held_out_compute_ = 0;  // mean compute_fraction over the last validation pass
  std::unique_ptr<GradientReducer> reducer_;  // several ranks only
};

}  // namespace sy
