// Import of a Hugging Face Mixtral directory (runtime/hf_mixtral.h): the
// export's mapping read backwards, HF's (out, in) Linear weights transposed
// into our (in, out) ones.
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/error.h"
#include "core/file.h"
#include "ops/rmsnorm.h"
#include "runtime/hf_mixtral.h"

namespace sy {

namespace fs = std::filesystem;
using switchyard::ModelConfig;
using switchyard::DataConfig;
using switchyard::MoeConfig;

namespace {

nlohmann::json read_json(const std::string& path, const std::string& what) {
  // (A directory opens, then fails the read with a stream's message; a
  // device or FIFO could be read forever.)
  if (const std::string kind = not_a_regular_file(path); !kind.empty())
    throw ConfigError(path + ": " + kind + " (" + what + ")");
  const std::string text = read_whole_file(path, "(" + what + ")");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    std::string why = e.what();
    throw ConfigError(path + ": not JSON (" + why.substr(0, why.find('\n')) + ")");
  }
}

// config.json's keys, each refused in one line naming the file and the key.
class HfConfig {
 public:
  explicit HfConfig(const std::string& dir, const char* file = "config.json")
      : path_((fs::path(dir) / file).string()),
        j_(read_json(path_, std::string("a Hugging Face model directory has ") + file)) {
    if (!j_.is_object()) throw ConfigError(path_ + ": not a JSON object");
  }
  const std::string& path() const { return path_; }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  int64_t integer(const char* key, int64_t lo, int64_t hi, std::optional<int64_t> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      missing(key);
    }
    const auto& v = j_[key];
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
      refuse(key, v.dump(), "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return v.get<int64_t>();
  }
  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_number()) refuse(key, j_[key].dump(), "must be a number");
    return j_[key].get<double>();
  }
  std::string text(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) refuse(key, j_[key].dump(), "must be a string");
    return j_[key].get<std::string>();
  }
  bool flag(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) refuse(key, j_[key].dump(), "must be true or false");
    return j_[key].get<bool>();
  }
  const nlohmann::json& raw(const char* key) const { return j_[key]; }
  [[noreturn]] void refuse(const char* key, const std::string& value, const std::string& why) const {
    throw ConfigError(path_ + ": " + key + " = " + value + ": " + why);
  }
  [[noreturn]] void missing(const char* key) const {
    throw ConfigError(path_ + ": " + key + " is missing (a Mixtral config.json has it)");
  }

 private:
  std::string path_;
  nlohmann::json j_;
};

// Whether the directory's tokenizer puts its bos token before a text:
// tokenizer_config.json's add_bos_token (true where it or the file is
// absent, as Llama's and Mistral's tokenizers do).
bool adds_bos(const std::string& dir) {
  if (!fs::exists(fs::path(dir) / "tokenizer_config.json")) return true;
  return HfConfig(dir, "tokenizer_config.json").flag("add_bos_token", true);
}

// Where each tensor of the directory lies: model.safetensors, or the files
// model.safetensors.index.json's weight_map names.
class HfWeights {
 public:
  explicit HfWeights(const std::string& dir) : dir_(dir) {
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    std::map<std::string, std::string> file_of;
    if (fs::exists(index)) {
      const nlohmann::json j = read_json(index.string(), "");
      if (!j.contains("weight_map") || !j["weight_map"].is_object())
        throw ConfigError(index.string() + ": no weight_map object");
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos || file == "." || file == "..")
          throw ConfigError(index.string() + ": weight_map[" + name + "] = " + file.dump() +
                            ": must name a file in the directory");
        file_of[name] = file.get<std::string>();
      }
    }
    auto reader = [&](const std::string& file) {
      auto& r = readers_[file];
      if (!r) r = std::make_unique<SafetensorsReader>((fs::path(dir) / file).string());
      return r.get();
    };
    if (file_of.empty()) {
      const SafetensorsReader* r = reader("model.safetensors");  // (a missing file: one line naming it)
      for (const auto& t : r->tensors()) where_[t.name] = {r, &t};
      return;
    }
    for (const auto& [name, file] : file_of) {
      const SafetensorsReader* r = reader(file);
      const TensorRecord* t = r->find(name);
      if (!t) throw ConfigError(r->path() + ": tensor " + name + " is missing (the index places it here)");
      where_[name] = {r, t};
    }
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, at] : where_) out.push_back(name);
    return out;
  }
  bool has(const std::string& name) const { return where_.count(name) > 0; }
  bool fused_experts() const {
    for (const auto& [name, at] : where_)
      if (name.find(".mlp.experts.gate_up_proj") != std::string::npos) return true;
    return false;
  }
  // The tensor's header checked: present, F32, BF16 or F16, of this shape.
  void check(const std::string& name, const Shape& shape) const {
    auto it = where_.find(name);
    if (it == where_.end() && fused_experts())
      throw ConfigError(dir_ + ": tensor " + name + " is missing: the experts are in transformers 5's fused layout "
                        "(mlp.experts.gate_up_proj, down_proj), which the import does not read; save the model with "
                        "save_pretrained's default save_original_format=True");
    if (it == where_.end())
      throw ConfigError(dir_ + ": tensor " + name + " is missing (a Mixtral of this config.json has it)");
    const auto& [r, t] = it->second;
    if (t->dtype != "F32" && t->dtype != "BF16" && t->dtype != "F16")
      throw ConfigError(r->path() + ": tensor " + name + ": dtype " + printable(t->dtype, 20) +
                        ", the import reads F32, BF16 and F16 (save the model in one of them)");
    if (t->shape != shape)
      throw ConfigError(r->path() + ": tensor " + name + ": shape " + shape_str(t->shape) + ", this config.json gives " +
                        shape_str(shape));
  }
  // The tensor as f32 on the host, its header checked.
  Tensor read(const std::string& name, const Shape& shape) const {
    check(name, shape);
    const auto& [r, t] = where_.at(name);
    return r->read_f32(*t);
  }

 private:
  std::string dir_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> readers_;
  std::map<std::string, std::pair<const SafetensorsReader*, const TensorRecord*>> where_;
};

// dst (rows, ld) columns [c0, c0 + cols) = src^T, src (cols, rows).
void put_transposed(float* dst, int64_t rows, int64_t ld, int64_t c0, const Tensor& src) {
  const int64_t cols = src.dim(0);
  const float* s = src.f32();
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) dst[r * ld + c0 + c] = s[c * rows + r];
}

// switchyard.trained_seq_len, where a Switchyard export wrote a usable one; else 0.
int64_t trained_seq_len(const HfConfig& j) {
  if (!j.has("switchyard") || !j.raw("switchyard").is_object()) return 0;
  const nlohmann::json& sy = j.raw("switchyard");
  if (!sy.contains("trained_seq_len") || !sy["trained_seq_len"].is_number_integer()) return 0;
  return std::max<int64_t>(0, sy["trained_seq_len"].get<int64_t>());
}
}  // namespace

std::string mixtral_window_note(const std::string& dir, const Config& base, const Config& cfg) {
  const HfConfig j(dir);
  if (base.model().has_seq_len() || trained_seq_len(j) > 0 || !j.has("max_position_embeddings")) return "";
  const int64_t max_pos = j.integer("max_position_embeddings", 1, int64_t{1} << 40);
  const int64_t T = cfg.model().seq_len();
  if (max_pos <= T) return "";
  return "model.seq_len " + std::to_string(T) + " (the default): sample and fine-tuning see windows of " +
         std::to_string(T) + " tokens, where config.json's max_position_embeddings is " + std::to_string(max_pos) +
         "; --set model.seq_len=N for a longer one";
}

Config mixtral_config_from_json(const std::string& dir, Config base) {
  const HfConfig j(dir);
  const std::string type = j.text("model_type", "");
  if (type != "mixtral")
    j.refuse("model_type", "\"" + printable(type, 40) + "\"", "the import reads Mixtral (model_type \"mixtral\")");
  const std::string act = j.text("hidden_act", "silu");
  if (act != "silu" && act != "swish")  // (transformers' ACT2FN: the same SiLU)
    j.refuse("hidden_act", j.raw("hidden_act").dump(), "Switchyard's SwiGLU experts gate with silu");
  const double eps = j.number("rms_norm_eps", 1e-5);
  if (std::fabs(eps - ops::kRmsNormEps) > 1e-3 * ops::kRmsNormEps)
    j.refuse("rms_norm_eps", j.raw("rms_norm_eps").dump(), "Switchyard's RMSNorm adds 1e-05 (ops/rmsnorm.h)");
  if (j.has("rope_scaling")) j.refuse("rope_scaling", j.raw("rope_scaling").dump(), "Switchyard's RoPE has no scaling");
  if (j.has("partial_rotary_factor") && j.number("partial_rotary_factor", 1) != 1)
    j.refuse("partial_rotary_factor", j.raw("partial_rotary_factor").dump(),
             "Switchyard's RoPE rotates the whole head (1)");
  // RoPE's base: rope_theta, or (transformers 5) rope_parameters' own, whose
  // rope_type must be the plain rotation; both where they agree.
  double theta = j.number("rope_theta", 1e6);  // (transformers' MixtralConfig default)
  if (j.has("rope_parameters")) {
    const nlohmann::json& rp = j.raw("rope_parameters");
    if (!rp.is_object()) j.refuse("rope_parameters", rp.dump(), "must be an object");
    if (rp.contains("rope_type") && rp["rope_type"] != "default")
      j.refuse("rope_parameters", rp.dump(), "Switchyard's RoPE is rope_type \"default\" (no scaling)");
    if (rp.contains("partial_rotary_factor") && !(rp["partial_rotary_factor"].is_number() && rp["partial_rotary_factor"] == 1))
      j.refuse("rope_parameters", rp.dump(), "Switchyard's RoPE rotates the whole head (partial_rotary_factor 1)");
    if (rp.contains("rope_theta")) {
      if (!rp["rope_theta"].is_number()) j.refuse("rope_parameters", rp.dump(), "its rope_theta must be a number");
      if (j.has("rope_theta") && rp["rope_theta"].get<double>() != theta)
        j.refuse("rope_parameters", rp.dump(), "its rope_theta differs from rope_theta = " + j.raw("rope_theta").dump());
      theta = rp["rope_theta"].get<double>();
    }
  }
  const int64_t C = j.integer("hidden_size", 1, 1 << 16), L = j.integer("num_hidden_layers", 1, 1024);
  const int64_t H = j.integer("num_attention_heads", 1, 4096);
  if (C % H != 0) j.refuse("num_attention_heads", std::to_string(H), "must divide hidden_size = " + std::to_string(C));
  if (j.has("head_dim") && j.integer("head_dim", 1, 1 << 16) != C / H)
    j.refuse("head_dim", j.raw("head_dim").dump(), "Switchyard's heads are hidden_size / num_attention_heads = " +
                                                       std::to_string(C / H));
  const int64_t G = j.integer("num_key_value_heads", 1, H, H);
  const int64_t E = j.integer("num_local_experts", 1, 65536), K = j.integer("num_experts_per_tok", 1, E);
  const int64_t max_pos = j.integer("max_position_embeddings", 1, int64_t{1} << 40, int64_t{1} << 40);

  Config cfg = std::move(base);
  // model.seq_len: as the base sets it (import_hf refuses one the cap below
  // cuts), else the length a Switchyard export says it was trained at, else
  // the default; at most max_position_embeddings.
  const int64_t trained = trained_seq_len(j);
  const int64_t want = !cfg.model().has_seq_len() && trained > 0 ? trained : cfg.model().seq_len();
  const int64_t seq_len = std::min<int64_t>(want, max_pos);
  if (j.has("sliding_window") && j.integer("sliding_window", 1, int64_t{1} << 40) < seq_len)
    j.refuse("sliding_window", j.raw("sliding_window").dump(),
             "Switchyard's dense attention sees the whole window of model.seq_len = " + std::to_string(seq_len) +
                 " (lower it to the sliding window or less)");
  const float init_std = cfg.model().init_std();
  ModelConfig& m = *cfg.mutable_model();
  m.Clear();
  m.set_d_model(static_cast<int32_t>(C));
  m.set_n_layers(static_cast<int32_t>(L));
  m.set_n_heads(static_cast<int32_t>(H));
  if (G < H) m.set_n_kv_heads(static_cast<int32_t>(G));
  m.set_ffn_hidden(static_cast<int32_t>(j.integer("intermediate_size", 1, 1 << 20)));
  m.set_vocab_size(static_cast<int32_t>(j.integer("vocab_size", 2, 1 << 20)));
  m.set_seq_len(static_cast<int32_t>(seq_len));
  m.set_init_std(static_cast<float>(j.number("initializer_range", init_std)));
  m.set_position(ModelConfig::ROPE);
  m.set_rope_base(static_cast<float>(theta));
  m.set_norm(ModelConfig::RMSNORM);
  m.set_activation(ModelConfig::SWIGLU);
  m.set_bias(false);
  m.set_tie_embeddings(j.flag("tie_word_embeddings", false));
  MoeConfig& e = *cfg.mutable_moe();
  e.Clear();
  e.set_num_experts(static_cast<int32_t>(E));
  e.set_top_k(static_cast<int32_t>(K));
  e.set_renormalize(true);
  e.set_dropless(true);
  e.set_every_n_layers(1);
  // Fine-tuning's losses as transformers trains Mixtral: its balance loss
  // only with output_router_logits (false in Mixtral's configs), pooled over
  // the L layers and k at balance, where ours is per layer and 1 at balance
  // (ops/router_loss.h), summed over the layers: the same scale at coef k / L
  // (the same gradient where every layer's load is the pooled one). No z-loss
  // (a Switchyard export's z-loss is not written, so it comes back 0 too).
  // (A Switchyard export's coefficient comes back whatever the flag says.)
  const double aux = j.number("router_aux_loss_coef", 0.001);
  const bool balanced = j.flag("output_router_logits", false) || j.has("switchyard");
  e.set_load_balance_coef(balanced ? static_cast<float>(aux * K / L) : 0.f);
  e.set_z_loss_coef(0.f);
  // The token every text begins with (bos_token_id, where the tokenizer
  // adds it; a byte vocabulary has none), unless the base config says.
  const int64_t V = m.vocab_size();
  DataConfig& d = *cfg.mutable_data();
  if (!d.has_bos_id() && V != 256 && j.has("bos_token_id") && adds_bos(dir))
    d.set_bos_id(static_cast<int32_t>(j.integer("bos_token_id", 0, V - 1)));
  // The one that ends a text (eos_token_id: sample stops there), where it
  // is one id (some configs list several; those are left to --set).
  if (!d.has_eos_id() && V != 256 && j.has("eos_token_id") && j.raw("eos_token_id").is_number_integer())
    d.set_eos_id(static_cast<int32_t>(j.integer("eos_token_id", 0, V - 1)));
  cfg.clear_attention();
  cfg.clear_depth();
  fill_defaults(cfg);
  check_mixtral_expressible(cfg, j.path());  // (what the mapping needs; a logic error if it refuses)
  return cfg;
}

namespace {

// The tensors a Mixtral of cfg has, by Hugging Face name, with their shapes
// (lm_head.weight where the head is untied), in the export's order.
std::vector<std::pair<std::string, Shape>> expected_tensors(const Config& cfg) {
  const auto& m = cfg.model();
  const int64_t C = m.d_model(), V = m.vocab_size(), G = cfg.moe().num_experts(), H = m.ffn_hidden();
  const int64_t KV = C / m.n_heads() * kv_heads(m);
  std::vector<std::pair<std::string, Shape>> out = {{"model.embed_tokens.weight", {V, C}}};
  for (int l = 0; l < m.n_layers(); ++l) {
    const std::string at = "model.layers." + std::to_string(l);
    out.insert(out.end(), {{at + ".input_layernorm.weight", {C}},
                           {at + ".self_attn.q_proj.weight", {C, C}},
                           {at + ".self_attn.k_proj.weight", {KV, C}},
                           {at + ".self_attn.v_proj.weight", {KV, C}},
                           {at + ".self_attn.o_proj.weight", {C, C}},
                           {at + ".post_attention_layernorm.weight", {C}},
                           {at + ".block_sparse_moe.gate.weight", {G, C}}});
    for (int64_t g = 0; g < G; ++g) {
      const std::string ex = at + ".block_sparse_moe.experts." + std::to_string(g);
      out.insert(out.end(), {{ex + ".w1.weight", {H, C}}, {ex + ".w2.weight", {C, H}}, {ex + ".w3.weight", {H, C}}});
    }
  }
  out.push_back({"model.norm.weight", {C}});
  if (!m.tie_embeddings()) out.push_back({"lm_head.weight", {V, C}});
  return out;
}

// Every expected tensor's header, and no unknown tensor (a tied model's
// lm_head.weight, the embedding's copy, and RoPE's inv_freq buffers, made
// from rope_theta, are let through).
void check_tensors(const HfWeights& hf, const std::string& dir, const Config& cfg) {
  std::set<std::string> known;
  for (const auto& [name, shape] : expected_tensors(cfg)) {
    hf.check(name, shape);
    known.insert(name);
  }
  const int64_t V = cfg.model().vocab_size(), C = cfg.model().d_model();
  if (cfg.model().tie_embeddings() && hf.has("lm_head.weight")) {
    hf.check("lm_head.weight", {V, C});
    known.insert("lm_head.weight");
  }
  for (const std::string& name : hf.names())
    if (!known.count(name) && name.find("rotary_emb.inv_freq") == std::string::npos)
      throw ConfigError(dir + ": tensor " + name + " is not part of a Mixtral of this config.json");
}

}  // namespace

void check_mixtral_weights(const std::string& dir, const Config& cfg) { check_tensors(HfWeights(dir), dir, cfg); }

void load_mixtral_weights(const std::string& dir, const Config& cfg, Transformer& model) {
  const auto& m = cfg.model();
  const int64_t C = m.d_model(), V = m.vocab_size(), G = cfg.moe().num_experts(), H = m.ffn_hidden();
  const int64_t KV = C / m.n_heads() * kv_heads(m);
  const HfWeights hf(dir);
  check_tensors(hf, dir, cfg);  // (every header first: what follows reads the data)
  // Written in place, a tensor at a time (the model is the import's own).
  std::set<std::string> written;
  auto value = [&](const std::string& name) {  // the parameter's host values
    Param* p = model.params().find(name);
    SY_CHECK(p && p->value.device().is_cpu(), "import: the model has no host parameter " << name);
    written.insert(name);
    return p->value.f32();
  };
  auto as_is = [&](const std::string& ours, const std::string& theirs, const Shape& shape) {
    const Tensor t = hf.read(theirs, shape);
    std::copy_n(t.f32(), t.numel(), value(ours));
  };
  as_is("wte", "model.embed_tokens.weight", {V, C});
  for (int l = 0; l < m.n_layers(); ++l) {
    const std::string h = "h" + std::to_string(l), at = "model.layers." + std::to_string(l);
    as_is(h + ".ln1.w", at + ".input_layernorm.weight", {C});
    float* qkv = value(h + ".attn.qkv.w");  // (C, C + 2 KV): [q | k | v]
    put_transposed(qkv, C, C + 2 * KV, 0, hf.read(at + ".self_attn.q_proj.weight", {C, C}));
    put_transposed(qkv, C, C + 2 * KV, C, hf.read(at + ".self_attn.k_proj.weight", {KV, C}));
    put_transposed(qkv, C, C + 2 * KV, C + KV, hf.read(at + ".self_attn.v_proj.weight", {KV, C}));
    put_transposed(value(h + ".attn.proj.w"), C, C, 0, hf.read(at + ".self_attn.o_proj.weight", {C, C}));
    as_is(h + ".ln2.w", at + ".post_attention_layernorm.weight", {C});
    put_transposed(value(h + ".moe.router.w"), C, G, 0, hf.read(at + ".block_sparse_moe.gate.weight", {G, C}));
    float* w1 = value(h + ".moe.experts.w1");  // (G, C, 2H): [gate | up]
    float* w2 = value(h + ".moe.experts.w2");  // (G, H, C)
    for (int64_t g = 0; g < G; ++g) {
      const std::string ex = at + ".block_sparse_moe.experts." + std::to_string(g);
      put_transposed(w1 + g * C * 2 * H, C, 2 * H, 0, hf.read(ex + ".w1.weight", {H, C}));  // gate
      put_transposed(w1 + g * C * 2 * H, C, 2 * H, H, hf.read(ex + ".w3.weight", {H, C}));  // up
      put_transposed(w2 + g * H * C, H, C, 0, hf.read(ex + ".w2.weight", {C, H}));  // down
    }
  }
  as_is("ln_f.w", "model.norm.weight", {C});
  if (!m.tie_embeddings()) put_transposed(value("head.w"), C, V, 0, hf.read("lm_head.weight", {V, C}));
  for (Param* p : model.params().all())
    SY_CHECK(written.count(p->name), "import: parameter " << p->name << " has no Hugging Face Mixtral tensor");
  model.params().refresh_shadows(model.ctx());
}

}  // namespace sy
