// What a logged step reports: the JSON metrics line (one per logged step,
// runtime/metrics.h writes it) and the human progress line, built from the
// model's last forward and the trainer's counters.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/model.h"

namespace sy {

// Expert load of one MoE layer over a whole validation pass: the router in
// evaluation mode (no noise or jitter, eval capacity) on held-out text.
struct HeldOutRouting {
  int layer = 0;
  std::vector<double> load;  // fraction of assignments per expert, before capacity
  double max_over_mean = 0, dropped = 0, unserved = 0;
  double realized_cost = 0, budget_dropped = 0;  // cost per token (dense-FFN units); share dropped by the budget
};

// The trainer's side of one logged step.
struct StepLog {
  int64_t step = 0, steps = 0;
  float loss = 0;                 // mean training loss since the last log line
  bool evaluated = false;
  float val_loss = 0;
  const std::vector<HeldOutRouting>* held_out = nullptr;  // with evaluated
  double val_compute_fraction = 0;  // with evaluated: compute_fraction over the validation pass
  float lr = 0, grad_norm = 0;
  int64_t bad_steps = 0;          // steps skipped for non-finite values, in all
  double tokens_per_s = 0, flops_per_s = 0, elapsed_s = 0, eta_s = 0;
  int world = 1;
  // Backend CUDA: the device's dense bf16 peak (TFLOP/s; 0 unknown) and the
  // allocator's high-water mark of live device bytes.
  double peak_tflops = 0;
  size_t device_bytes_high_water = 0;  // live tensors' peak
  size_t device_bytes_reserved = 0;    // the pool's peak from the driver (fragmentation, cache)
  // Backend CPU: the host allocator's high-water mark of live tensor bytes
  // (what train.recompute lowers; the process's resident size also holds
  // the allocator's cached blocks).
  size_t host_tensor_bytes_high_water = 0;
  // Device tensors through MPI (ranks sharing a GPU, or parallel.backend
  // MPI): host memory the communicators keep to stage them (page-locked;
  // ParallelContext::host_staging_bytes).
  size_t host_staging_bytes = 0;
  // Device runs: times per training step the host waited for the device
  // (core/context.h, host_waits) since the last log line; each one drains
  // the GPU's queue of launched work.
  double host_waits_per_step = 0;
  double all_to_all_s = 0;   // last step: the expert-parallel group's collectives over its micro-batches
  double all_to_all_bytes = 0;  // last step: bytes rank 0 sent in its MoE exchanges (its rows to itself too)
  double all_reduce_s = 0;   // since the last log line (NCCL stream mode: dense part one step late)
  double all_reduce_exposed_s = 0;  // the part of it backward did not hide
  double share_values_s = 0;  // since the last log line: the sharded update's all-gathers (parallel.shard_optimizer; MPI)
  bool sharded = false;       // the moments are sharded: share_values_s is written
};

// The model's part of a logged step: per-layer routing and compute statistics
// of its last forward, as metrics and as the progress line's short form. Taken
// after the training step, before evaluation reroutes.
struct RoutingSnapshot {
  nlohmann::json metrics = nlohmann::json::object();
  std::string brief;
};
RoutingSnapshot routing_snapshot(Transformer& model, int64_t tokens_per_step);

// The metrics line: the snapshot plus the trainer's counters.
nlohmann::json metrics_line(const StepLog& s, const RoutingSnapshot& r);
// "step 10/600 | loss ... | val ... | lr ... | 4.5k tok/s | ... | ETA ..." + r.brief
std::string progress_line(const StepLog& s, const RoutingSnapshot& r);

// train_switch --eval-only: the validation loss of the model at `step` and
// its held-out routing (per MoE layer the expert load, per depth-routed block
// the kept fraction), as a metrics line and as
// "eval step 120 | val 1.2345 | L0 max/mean 1.10 drop 0.000 | L1 kept 0.50".
struct EvalReport {
  int64_t step = 0;
  float val_loss = 0;
  std::vector<HeldOutRouting> moe;
  std::vector<std::pair<int, double>> depth;
};
nlohmann::json eval_metrics_line(const EvalReport& e);
std::string eval_progress_line(const EvalReport& e);

// What starts a run's log: parameters, layers, data, and for sparse attention
// what it costs at long context.
std::string run_summary(const Config& cfg, int64_t parameters, int64_t train_size, int64_t val_size,
                        const std::string& train_unit = "bytes", const std::string& val_unit = "bytes");

}  // namespace sy
