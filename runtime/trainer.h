// The training loop: data, model, AdamW with warm-up + cosine schedule,
// gradient clipping, periodic evaluation, progress lines and metrics.
#pragma once
#include <iosfwd>
#include <string>

#include "runtime/config.h"
#include "runtime/model.h"

namespace sy {

struct TrainOptions {
  std::string metrics_path;  // JSONL; empty for none
  std::ostream* log = nullptr;  // progress lines; null for silence
};

struct TrainResult {
  float first_loss = 0, final_loss = 0, final_val_loss = 0;
  double tokens_per_s = 0;
};

// Learning rate at `step` (1-based): linear warm-up to lr, cosine to min_lr.
float learning_rate(const switchyard::TrainConfig& t, int64_t step);

class Trainer {
 public:
  Trainer(const Config& cfg, TrainOptions opts);
  TrainResult run();
  float evaluate();  // mean validation loss over eval_batches fixed batches
  Transformer& model() { return model_; }

 private:
  Config cfg_;
  TrainOptions opts_;
  Dataset data_;
  Transformer model_;
  WindowSampler train_, val_;
};

}  // namespace sy
