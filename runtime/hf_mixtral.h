// Export to the Hugging Face Mixtral layout (transformers' MixtralForCausalLM).
// examples/hf_mixtral_reference.h reads an export back with a forward of its own.
//
// What is written (docs/export_hf.md has the mapping table): config.json and
// model.safetensors with, per layer l and expert e (HF's Linear weights are
// (out, in) and compute y = x W^T; ours are (in, out) and compute y = x W):
//
//   model.embed_tokens.weight                  (V, C)   wte as is
//   model.layers.l.input_layernorm.weight      (C)      hl.ln1.w
//   model.layers.l.self_attn.q_proj.weight     (C, C)   hl.attn.qkv.w[:, 0:C]^T
//   model.layers.l.self_attn.k_proj.weight     (K, C)   hl.attn.qkv.w[:, C:C+K]^T
//   model.layers.l.self_attn.v_proj.weight     (K, C)   hl.attn.qkv.w[:, C+K:C+2K]^T
//     (K = n_kv_heads x head size: C without grouped-query attention)
//   model.layers.l.self_attn.o_proj.weight     (C, C)   hl.attn.proj.w^T
//   model.layers.l.post_attention_layernorm.weight (C)  hl.ln2.w
//   model.layers.l.block_sparse_moe.gate.weight (G, C)  hl.moe.router.w^T
//   model.layers.l.block_sparse_moe.experts.e.w1.weight (H, C)  hl.moe.experts.w1[e][:, 0:H]^T   (gate)
//   model.layers.l.block_sparse_moe.experts.e.w3.weight (H, C)  hl.moe.experts.w1[e][:, H:2H]^T  (up)
//   model.layers.l.block_sparse_moe.experts.e.w2.weight (C, H)  hl.moe.experts.w2[e]^T          (down)
//   model.norm.weight                          (C)      ln_f.w
//   lm_head.weight                             (V, C)   head.w^T, or wte when tied
//
// Heads need no permutation: our head h is columns [hD, (h+1)D) of each of
// q, k, v, which become rows [hD, (h+1)D) of q_proj, k_proj, v_proj, HF's
// head h; and our RoPE already pairs element i with i + D/2 (rotate_half).
//
// Only a model HF's Mixtral computes identically can be exported; anything
// else is refused with one line naming the field (check_mixtral_expressible).
#pragma once
#include <string>
#include <vector>

#include "runtime/config.h"
#include "runtime/model.h"
#include "runtime/safetensors.h"

namespace sy {

// ConfigError "<source>: <field> = <value>: <why>" for the first setting HF's
// Mixtral cannot express: learned positions, LayerNorm, GELU, biases, no
// experts or dense FFN blocks, shared experts, expert-choice, hash or sigmoid
// routing, top-k weights not renormalised, balancing biases or Sinkhorn's
// mean offsets at evaluation (they change the selection), adaptive depth,
// routed or block-sparse attention.
void check_mixtral_expressible(const Config& cfg, const std::string& source);

// What the export changes without refusing, one sentence each (empty when
// nothing): routing with a capacity in training (Mixtral drops no token).
std::vector<std::string> mixtral_export_notes(const Config& cfg);

// config.json for `cfg`; dtype "float32" or "bfloat16".
std::string mixtral_config_json(const Config& cfg, const std::string& torch_dtype);

// The model's parameters under HF names and layouts, in the order above,
// as new host f32 tensors. The model must hold every expert (expert_parallel
// 1) and its parameters must all be used by the mapping (else a logic error).
NamedTensors mixtral_tensors(const Config& cfg, Transformer& model);

// Writes out_dir/config.json and out_dir/model.safetensors (f32 or bf16,
// rounded to nearest even) into a fresh directory next to out_dir, then
// renames it into place: out_dir must not exist, and nothing is left
// half-written. Returns the file names written.
std::vector<std::string> write_mixtral_export(const std::string& out_dir, const Config& cfg, Transformer& model,
                                              DType dtype, const std::string& source_note);

// Import, the mapping above read backwards (examples/import_hf).
//
// The model and moe fields of a Hugging Face Mixtral directory's
// config.json over `base` (the rest: data, training): RoPE (rope_theta),
// RMSNorm, SwiGLU experts in every block of intermediate_size, no biases,
// num_local_experts experts, num_experts_per_tok of them renormalised and
// dropless, grouped key/value heads where num_key_value_heads says so.
// model.seq_len stays base's (capped at max_position_embeddings). One
// ConfigError line naming the file and the key for what Switchyard's model
// cannot compute: another model_type, an activation other than silu, an
// rms_norm_eps other than ops::kRmsNormEps, a sliding window shorter than
// the window, rope_scaling, a head_dim other than hidden_size /
// num_attention_heads, a missing key.
Config mixtral_config_from_json(const std::string& dir, Config base);

// Where neither the base config nor a Switchyard export's trained_seq_len
// chose model.seq_len and the default leaves a window shorter than
// config.json's max_position_embeddings, a note saying so; else empty.
std::string mixtral_window_note(const std::string& dir, const Config& base, const Config& cfg);

// The directory's tensors as that config needs them, from their headers
// alone (before a model is built): every tensor of model.safetensors, or of
// the files model.safetensors.index.json's weight_map names. One
// ConfigError line for a missing, unknown or misshapen tensor, or a dtype
// other than F32, BF16 and F16.
void check_mixtral_weights(const std::string& dir, const Config& cfg);

// The directory's weights into `model` (built from that config on the
// host, expert_parallel 1; BF16 and F16 widened exactly), checked as above first.
void load_mixtral_weights(const std::string& dir, const Config& cfg, Transformer& model);

}  // namespace sy
