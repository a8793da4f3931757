// Hugging Face's MixtralForCausalLM forward, written again from its modeling
// code's conventions, reading only an export directory (config.json and
// model.safetensors by HF name, (out, in) weights, f32 or bf16); nothing is
// shared with the training code's layers or ops. It checks
// runtime/hf_mixtral.h's export (tests/export_hf_test.cc, export_hf --verify).
// Plain loops over activations, which is why it lives here and not in
// runtime/ (where every loop over activations is an op).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sy {

// y = x W^T; RMSNorm x * rsqrt(mean(x^2) + eps) * w; RoPE
// x * cos + rotate_half(x) * sin at positions 0..T-1 with
// inv_freq_i = rope_theta^(-2i/D); causal softmax attention with scale
// 1/sqrt(D); router softmax over all experts, top-k, weights divided by their
// sum; expert w2(silu(w1 x) * w3 x); final norm, lm_head. Plain loops in
// float with double accumulators; nothing shared with the training code.
class HfMixtralReference {
 public:
  explicit HfMixtralReference(const std::string& dir);
  // Logits (T, V) of one sequence, row-major. T <= max_position_embeddings.
  std::vector<float> logits(const std::vector<int32_t>& tokens) const;
  int64_t vocab_size() const { return V_; }

 private:
  const std::vector<float>& w(const std::string& name) const;
  std::string dir_;
  int64_t V_ = 0, C_ = 0, H_ = 0, L_ = 0, heads_ = 0, kv_heads_ = 0, D_ = 0, G_ = 0, k_ = 0, max_pos_ = 0;
  double eps_ = 0, theta_ = 0;
  bool tied_ = false;
  std::vector<std::pair<std::string, std::vector<float>>> tensors_;
};

}  // namespace sy
