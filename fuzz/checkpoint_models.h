// The two models checkpoint_fuzz loads into, and checkpoint_seeds writes its
// seed corpus from: as small as the config allows (d_model 8, a vocabulary of
// 5 ids from token files) so that a seed checkpoint is a few KB.
//   0  dense: one block
//   1  routed: a MoE block (2 experts, balancing bias) with routed attention
//      (its own centroid set), then a depth-routed dense block
#pragma once
#include <string>

#include "runtime/config.h"

namespace sy_fuzz {

inline sy::Config checkpoint_model_config(int which) {
  const char* dense = R"(
    model { vocab_size: 5 d_model: 8 n_layers: 1 n_heads: 1 ffn_hidden: 4 seq_len: 4 }
    train { batch: 2 steps: 2 warmup_steps: 0 eval_batches: 1 seed: 7 keep_checkpoints: 0 }
    data { source: TOKEN_FILES }
  )";
  const char* routed = R"(
    model { vocab_size: 5 d_model: 8 n_layers: 2 n_heads: 2 ffn_hidden: 4 seq_len: 8 }
    train { batch: 2 steps: 2 warmup_steps: 0 eval_batches: 1 seed: 7 keep_checkpoints: 0 }
    data { source: TOKEN_FILES }
    moe { num_experts: 2 every_n_layers: 2 expert_hidden: 2 bias_balance_rate: 0.01 }
    attention { kind: ROUTED last_n_layers: 1 num_routing_heads: 1 num_clusters: 2 window: 2 }
    depth { every_n_layers: 2 capacity: 0.5 }
  )";
  return sy::parse_config(which == 0 ? dense : routed, which == 0 ? "checkpoint_fuzz dense" : "checkpoint_fuzz routed");
}

// The fuzz input's layout (checkpoint_fuzz.cc reads it, checkpoint_seeds.cc
// writes it): one flags byte, then either a safetensors file's bytes or the
// files of a checkpoint directory, each as "@@ <name>\n<bytes>", separated
// by "\n".
enum CheckpointFuzzFlags : unsigned char {
  kDirectory = 1,  // a checkpoint directory (else one safetensors file)
  kRouted = 2,     // load into model 1 (else model 0)
  kOptimizer = 4,  // load the moments too
  kFixDigests = 8, // rewrite the manifest's sizes, CRCs and tensor tables from the files first
};
constexpr const char* kFileMark = "@@ ";

}  // namespace sy_fuzz
