// Loading, overriding and validating a run's configuration
// (configs/switchyard.proto). Every failure is a ConfigError whose message is
// one line naming the file (or --set), the field, the value and what is allowed.
#pragma once
#include <string>
#include <vector>

#include "switchyard.pb.h"

namespace sy {

using Config = switchyard::Config;

// Parse a text-format file, apply `overrides` ("a.b=v", in order), validate.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The config file as written, parsed but not validated (for a tool that
// completes it from elsewhere first: import_hf).
Config read_config(const std::string& path);

// Parse text-format config text; `source` names it in errors.
Config parse_config(const std::string& text, const std::string& source);

// Parse any text-format message (a checkpoint manifest); ConfigError naming
// `source`, the line and the field on a parse error.
void parse_text_proto(const std::string& text, const std::string& source, google::protobuf::Message& msg);

// Set one field from "path.to.field=value"; throws ConfigError.
void apply_override(Config& cfg, const std::string& assignment);

// Sets every unset scalar field of msg and its sub-messages to its default,
// so the text form spells out the whole resolved configuration.
void fill_defaults(google::protobuf::Message& msg);

// What a path that is not a regular file is ("no such file", "is a
// directory", ...); empty for a regular file. Config errors name it.
std::string not_a_regular_file(const std::string& path);

// Blocks [0, n) are recomputed in backward (train.recompute and
// train.recompute_blocks as resolved): 0 without recomputation, n_layers
// for every block.
inline int recomputed_blocks(const Config& cfg) {
  if (!cfg.train().recompute()) return 0;
  return cfg.train().recompute_blocks() > 0 ? cfg.train().recompute_blocks() : cfg.model().n_layers();
}

// Key/value heads as resolved: model.n_kv_heads, or n_heads where it is 0.
inline int kv_heads(const switchyard::ModelConfig& m) { return m.n_kv_heads() > 0 ? m.n_kv_heads() : m.n_heads(); }

// Whether block `layer` (0-based) has a MoE layer in its FFN position:
// experts at all, past moe.first_dense_layers, and (layer + 1) a multiple of
// moe.every_n_layers.
bool is_moe_layer(const switchyard::MoeConfig& moe, int layer);
// Whether block `layer` is depth-routed: depth.every_n_layers > 0 and
// (layer + 1) a multiple of it.
bool is_depth_routed(const switchyard::DepthConfig& depth, int layer);
// Whether block `layer` runs the sparse attention kind (attention.kind not
// DENSE, and the layer among the last attention.last_n_layers, 0: all).
bool is_sparse_attention_layer(const switchyard::AttentionConfig& at, int layer, int n_layers);

// A tokens-choose router whose weights are 1 whatever the scores: a learned
// router (not HASH) at moe.top_k 1 with moe.renormalize, where p / p = 1, so
// the expert's output does not depend on the router and the loss trains it
// only through the auxiliary losses (Switch weights the output by p; a top-1
// Mixtral-style model has this router). A note saying so, for a run about to
// train it; empty otherwise. Allowed, not refused: such a model exists
// (import_hf takes it) and samples as it was trained.
std::string untrained_router_note(const Config& cfg);

// Check every field's range and the relations between fields; `source` names
// the config in the error (a file path).
void validate_config(const Config& cfg, const std::string& source);

// Memory one rank needs for training, estimated from the config (bytes): the
// parameters with their gradients and AdamW moments (4 floats each; a rank's
// expert shard) and the activations a step keeps for backward for its
// batch / world sequences (one micro-batch's; with train.recompute every
// block's input and one block's activations). Attention keeps no T x T
// matrix on either backend (ops/attention.h: backward recomputes the
// probabilities from q, k and the LSE), so its share is its outputs and the
// LSE rows. Meant as a lower bound (temporaries and the allocator's slack
// come on top): on the CPU path the peak resident size of tiny, switch_tiny
// and routed_copy runs is 1.1-1.6x the estimate, of tiny at seq_len 16384,
// batch 1 2.9x (515 MB; the estimate had counted 8 GiB of T x T matrices).
struct MemoryEstimate {
  double parameters = 0, activations = 0;
  double total() const { return parameters + activations; }
};
MemoryEstimate estimate_memory(const Config& cfg, int world);

// This machine's physical memory in bytes (sysconf), 0 when unknown.
double physical_memory_bytes();

// What a rank's training draws on: the CPU backend this machine's physical
// memory, shared by every rank on it; CUDA the memory of the GPU the rank
// takes (its rank on the node modulo the GPUs, as train_switch picks it),
// shared by the node's ranks that take the same GPU. bytes 0 where unknown
// (no GPU visible: the trainer says so), and nothing is checked.
struct MemoryPool {
  double bytes = 0;
  int ranks = 1;                                                   // ranks that share it
  std::string holder = "this machine", kind = "physical memory";  // "... but <holder> has <bytes> of <kind>"
};
MemoryPool training_memory(const Config& cfg, int node_rank, int node_ranks);
// How many of a node's ranks take GPU `gpu` of `gpus` (those r with r % gpus == gpu).
int ranks_sharing_gpu(int gpu, int gpus, int node_ranks);

// ConfigError, one line with the estimate, when the pool's ranks would need
// more than it holds (a step of seq_len 65536 would otherwise fail at a
// terabyte allocation).
void check_memory(const Config& cfg, int world, const MemoryPool& pool, const std::string& source);

// Every field of the resolved config, set or at its default, one line each
// ("model.d_model = 64", repeated fields as "[a, b]", strings quoted and
// escaped) in schema order: two configs that train alike give the same text.
std::string canonical_config_text(const Config& cfg);

// The first field whose line differs between two canonical texts, with its
// value in each; `field` is empty when the texts are equal.
struct FieldDifference {
  std::string field, a, b;
};
FieldDifference first_difference(const std::string& canonical_a, const std::string& canonical_b);

}  // namespace sy
