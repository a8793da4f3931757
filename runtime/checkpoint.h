// Checkpoints: a directory per checkpoint (runtime/checkpoint_store.h has
// where they live and how one is published) of safetensors files
// (runtime/safetensors.h) and a text-format manifest (CheckpointManifest,
// configs/switchyard.proto). What is written, and by which world rank (ep
// ranks per expert-parallel group; the first group, ranks 0..ep-1, holds
// every expert shard once):
//
//   model-dense.safetensors    rank 0  every dense parameter under its name ("h0.attn.qkv.w")
//   optim-dense.safetensors    rank 0  their AdamW moments, "<name>.exp_avg" and
//                                      "<name>.exp_avg_sq"; metadata "step": updates applied
//   model-experts-<s>-of-<ep>.safetensors (5 digits each)
//                              rank s  (s < ep) shard s's experts, each expert's row of each
//                                      expert parameter under its GLOBAL index:
//                                      "h1.moe.experts.w1.e5" is expert 5's w1, (C, H)
//   optim-experts-<s>-of-<ep>.safetensors
//                              rank s  those rows' moments ("h1.moe.experts.w1.e5.exp_avg")
//   routing.safetensors        rank 0  routing state: centroid sets "<prefix>.mu", ".sum",
//                                      ".count"; balancing biases "h1.moe.router.balance_bias"
//   manifest.pbtxt             rank 0, last: the resolved config, step, optimizer step, tokens
//                                      seen, data position, seed, bad steps, centroid flags, and
//                                      every file with its size, CRC-32 and tensors (name, dtype,
//                                      shape, byte range, CRC-32)
//
// The moments are whole in the files where the run shards them
// (parallel.shard_optimizer: gathered to the writing ranks first). A model
// built for inference only (import_hf's) writes no optim files: a checkpoint
// of weights only, which --init-from and the tools read and --resume refuses.
//
// Tensor names do not depend on the expert-parallel size; only how they are
// split into files does, and the manifest indexes that. So a checkpoint loads
// at any ep that divides num_experts: each rank reads its own experts' rows
// from whichever files hold them. Everything is f32 and copied through host
// tensors, so a device backend adds copies and nothing else.
//
// What a resume restores, and why that is the whole state: parameters,
// moments and the AdamW step; the step (the learning rate and every router
// noise draw are functions of it and the seed); the sampler's position (its
// whole state: windows are counter-based draws); centroids and balancing
// biases. A resumed run's losses equal an uninterrupted run's, bit for bit,
// at the same layout.
#pragma once
#include <functional>
#include <string>

#include "runtime/config.h"
#include "runtime/model.h"
#include "runtime/parallel.h"
#include "runtime/startup.h"

namespace sy {

// Runs fn on every rank; if it throws on any, every rank throws AgreedError
// (runtime/startup.h: the lowest failing rank's message, exit code 2 for a
// ConfigError), so no rank has to end the job. par may be null (one rank: a
// ConfigError becomes an AgreedError too).
void run_agreed(ParallelContext* par, const std::function<void()>& fn);

// Where a run's weights started (CheckpointManifest.origin): empty
// checkpoint for a random init.
struct RunOrigin {
  std::string checkpoint;  // the source's directory, as given
  int64_t step = 0;        // its steps completed
  bool upcycled = false;   // its dense FFNs became this model's experts
};

// The trainer's counters that a checkpoint carries.
struct TrainState {
  int64_t step = 0;            // steps completed
  int64_t optimizer_step = 0;  // AdamW updates applied
  int64_t tokens_seen = 0;
  int64_t bad_steps = 0;       // skipped for non-finite values, in all
  int64_t bad_steps_in_a_row = 0;  // of them, the last ones before this step (train.max_bad_steps' streak)
  uint64_t data_position = 0;  // training batches drawn
  std::string data;            // what the batches were drawn from (Trainer::data_summary)
  double train_seconds = 0;    // wall-clock seconds trained so far, every part of a resumed run
  RunOrigin origin;
};

// Collective over every rank: writes the checkpoint of state.step under root,
// publishes it as `latest`, keeps the newest `keep` (0: all). Returns its
// directory.
std::string save_checkpoint(const std::string& root, const Config& cfg, Transformer& model, const TrainState& state,
                            ParallelContext* par, int keep);

// dir/manifest.pbtxt, parsed (ConfigError naming it).
switchyard::CheckpointManifest read_manifest(const std::string& dir);

// Every file against the manifest: present, header tensors as listed (names,
// dtypes, shapes, byte ranges), size, each tensor's CRC-32 and the file's.
// ConfigError naming the file and the tensor.
void verify_checkpoint(const std::string& dir, const switchyard::CheckpointManifest& m);

// cfg's model against the checkpoint's: ConfigError naming the first field
// that changes a parameter's shape or the model's layers. (The
// expert-parallel size may change; the config refuses one that does not
// divide moe.num_experts.)
// What the checkpoint is loaded for, which the refusal names: a resume (or
// a tool reading it), a new run from its weights, or upcycling, which
// compares the fields outside moe.* only (a dense checkpoint into a model
// whose MoE layers replace its FFNs).
enum class CheckpointUse { resume, init_from, upcycle };
void check_compatible(const Config& cfg, const switchyard::CheckpointManifest& m, const std::string& dir,
                      CheckpointUse use = CheckpointUse::resume);

// A run resumed with a config file of its own: where the file gives no
// balanced hash table (moe.hash_table) and the checkpoint's config has one
// under the same assignment, cfg takes the checkpoint's, the map its
// weights were trained with, instead of one made again from today's data.
void adopt_hash_table(Config& cfg, const switchyard::CheckpointManifest& m);

// Collective: rank 0 checks compatibility and verifies every file (agreed:
// a refusal is an AgreedError on every rank); then every rank reads what it
// holds (dense parameters, its experts' rows, the routing state and, with
// `optimizer`, the moments), checks every tensor's dtype and shape, and only
// then writes into the model. Returns the counters.
TrainState load_checkpoint(const std::string& dir, const Config& cfg, Transformer& model, ParallelContext* par,
                           bool optimizer, CheckpointUse use = CheckpointUse::resume);

// A new run's weights from another run's checkpoint (train_switch
// --init-from): fine-tuning, or sparse upcycling (Komatsuzaki et al. 2022,
// "Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints").
// Collective, with load_checkpoint's checks and its all-or-nothing writes.
//   - The same model (check_compatible): every weight and the routing
//     state, as a resume would load them.
//   - A dense checkpoint (moe.num_experts = 0) into this config's MoE model,
//     the same outside moe.* (check_compatible with upcycle): every expert of
//     layer l starts as a copy of the checkpoint's FFN of layer l (fc1 -> w1,
//     b1; fc2 -> w2, b2), each rank its own experts; every other weight and
//     the centroids as they are; the routers and balancing biases keep this
//     model's init. Refused where a copy cannot be the dense FFN: an expert
//     of another width than model.ffn_hidden, a shared expert. With
//     train.upcycle_reinit r > 0 (Drop-Upcycling, Nakamura et al. 2025) each
//     expert then re-draws its own round(r H) hidden units from the dense
//     weights' statistics (runtime/init_from.cc, DropUpcycle), so the copies
//     are partial and the function below is not kept; r > 0 is refused for
//     the same model, and where it rounds to no unit.
// Nothing else carries over: AdamW's moments stay zero, and the step, the
// schedule and the token count start at 0. Returns the data stream's
// position (with the same seed and data, the new run draws the batches the
// source would have drawn next) and the origin its checkpoints record (the
// source's absolute path). A run with balanced hash routing takes the
// source's table first (adopt_hash_table), as a resume with a config does.
//
// Upcycling with exact copies keeps the dense model's function where every
// token's weights sum to one and no token is dropped: top-k with
// moe.renormalize, dropless or a capacity that binds nowhere, no router
// noise. Then y = sum_k w_k
// FFN(x) = FFN(x), and the language-model loss gives the routers no
// gradient until the experts' own updates make them differ (the balance
// losses do give one).
struct InitFrom {
  RunOrigin origin;
  uint64_t data_position = 0;
};
InitFrom init_from_checkpoint(const std::string& dir, const Config& cfg, Transformer& model, ParallelContext* par);

// The routing settings that change what the same MoE weights compute
// (moe.top_k, renormalize, score_function, dropless; expert choice's
// capacity_factor; where neither side is dropless, capacity_factor_eval,
// min_capacity and slot_priority; the group limit's expert_groups,
// groups_per_token and group_score_experts; sinkhorn_at_eval) where cfg
// differs from
// the source's config, as "field new (the source's old), ..."; empty where
// none does or either has no experts. init_from_checkpoint prints it as a
// note (an imported Mixtral fine-tuned under a config that left them out
// would otherwise run top-1, unrenormalised, with drops, without a word).
std::string routing_changes(const Config& source, const Config& cfg);

}  // namespace sy
