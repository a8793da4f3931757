// The training loop: data, model, AdamW with warm-up + cosine schedule,
// gradient clipping, periodic evaluation, progress lines and metrics.
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

#include "runtime/config.h"
#include "runtime/model.h"
#include "runtime/parallel.h"

namespace sy {

struct TrainOptions {
  std::string metrics_path;  // JSONL; empty for none (only rank 0 writes)
  std::ostream* log = nullptr;  // progress lines; null for silence (only rank 0 prints)
  ParallelContext* par = nullptr;  // several ranks; null for one
  // An evaluation running longer than progress_after_s prints a progress line
  // (batches, rate, ETA) every progress_every_s seconds.
  double progress_after_s = 5, progress_every_s = 10;
  // Testing failure handling: at step fault_step, rank fault_rank throws
  // ("throw"), blocks forever ("hang") or exits at once ("exit").
  std::string fault;
  int fault_rank = -1;
  int64_t fault_step = -1;
};

struct TrainResult {
  float first_loss = 0, final_loss = 0, final_val_loss = 0;
  std::vector<float> losses;  // every step's training loss (mean over all ranks)
  // Timing over the steps after the first two (warm-up), this rank:
  int64_t timed_steps = 0;
  double step_s = 0, all_to_all_s = 0, all_reduce_s = 0;
  double all_to_all_bytes = 0;  // bytes this rank sent in MoE exchanges
  double tokens_per_s = 0;
};

// Expert load of one MoE layer over a whole validation pass: the router in
// evaluation mode (no noise or jitter, eval capacity) on held-out text.
struct HeldOutRouting {
  int layer = 0;
  std::vector<double> load;  // fraction of assignments per expert, before capacity
  double max_over_mean = 0, dropped = 0;
};

// Learning rate at `step` (1-based): linear warm-up to lr, cosine to min_lr.
float learning_rate(const switchyard::TrainConfig& t, int64_t step);

class Trainer {
 public:
  Trainer(const Config& cfg, TrainOptions opts);
  TrainResult run();
  float evaluate();  // mean validation loss over eval_batches fixed batches
  // Per MoE layer, the expert load of the last evaluate() (empty for a dense model).
  const std::vector<HeldOutRouting>& held_out_routing() const { return held_out_; }
  Transformer& model() { return model_; }

 private:
  Config cfg_;
  TrainOptions opts_;
  Dataset data_;
  Transformer model_;
  WindowSampler train_, val_;
  int rank_ = 0, world_ = 1;
  std::vector<HeldOutRouting> held_out_;
};

}  // namespace sy
