// Import of a Hugging Face Mixtral directory (runtime/hf_mixtral.h): the
// export's mapping read backwards, HF's (out, in) Linear weights transposed
// into our (in, out) ones.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "core/error.h"
#include "ops/rmsnorm.h"
#include "runtime/hf_mixtral.h"

namespace sy {

namespace fs = std::filesystem;
using switchyard::ModelConfig;
using switchyard::MoeConfig;

namespace {

nlohmann::json read_json(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": no such file (" + what + ")");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    std::string why = e.what();
    throw ConfigError(path + ": not JSON (" + why.substr(0, why.find('\n')) + ")");
  }
}

// config.json's keys, each refused in one line naming the file and the key.
class HfConfig {
 public:
  explicit HfConfig(const std::string& dir)
      : path_((fs::path(dir) / "config.json").string()), j_(read_json(path_, "a Hugging Face model directory has "
                                                                            "config.json")) {
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
        if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos)
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
  // The tensor as f32 on the host, its shape checked.
  Tensor read(const std::string& name, const Shape& shape) const {
    auto it = where_.find(name);
    if (it == where_.end())
      throw ConfigError(dir_ + ": tensor " + name + " is missing (a Mixtral of this config.json has it)");
    const auto& [r, t] = it->second;
    if (t->dtype != "F32" && t->dtype != "BF16")
      throw ConfigError(r->path() + ": tensor " + name + ": dtype " + printable(t->dtype, 20) +
                        ", the import reads F32 and BF16 (save the model in one of them)");
    if (t->shape != shape)
      throw ConfigError(r->path() + ": tensor " + name + ": shape " + shape_str(t->shape) + ", this config.json gives " +
                        shape_str(shape));
    Tensor v = r->read(*t);
    return v.dtype() == DType::f32 ? v : v.to(DType::f32);
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

}  // namespace

Config mixtral_config_from_json(const std::string& dir, Config base) {
  const HfConfig j(dir);
  const std::string type = j.text("model_type", "");
  if (type != "mixtral")
    j.refuse("model_type", "\"" + printable(type, 40) + "\"", "the import reads Mixtral (model_type \"mixtral\")");
  if (j.text("hidden_act", "silu") != "silu")
    j.refuse("hidden_act", j.raw("hidden_act").dump(), "Switchyard's SwiGLU experts gate with silu");
  const double eps = j.number("rms_norm_eps", 1e-5);
  if (std::fabs(eps - ops::kRmsNormEps) > 1e-3 * ops::kRmsNormEps)
    j.refuse("rms_norm_eps", j.raw("rms_norm_eps").dump(), "Switchyard's RMSNorm adds 1e-05 (ops/rmsnorm.h)");
  if (j.has("rope_scaling")) j.refuse("rope_scaling", j.raw("rope_scaling").dump(), "Switchyard's RoPE has no scaling");
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
  const int64_t seq_len = std::min<int64_t>(cfg.model().seq_len(), max_pos);
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
  m.set_rope_base(static_cast<float>(j.number("rope_theta", 1e6)));  // (transformers' MixtralConfig default)
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
  e.set_load_balance_coef(static_cast<float>(j.number("router_aux_loss_coef", 0.001)));
  cfg.clear_attention();
  cfg.clear_depth();
  fill_defaults(cfg);
  check_mixtral_expressible(cfg, j.path());  // (what the mapping needs; a logic error if it refuses)
  return cfg;
}

void load_mixtral_weights(const std::string& dir, const Config& cfg, Transformer& model) {
  const auto& m = cfg.model();
  const int64_t C = m.d_model(), V = m.vocab_size(), G = cfg.moe().num_experts(), H = m.ffn_hidden();
  const int64_t KV = C / m.n_heads() * kv_heads(m);
  const HfWeights hf(dir);
  // Every tensor read and checked before the model changes: (our name, value).
  std::vector<std::pair<std::string, Tensor>> staged;
  std::set<std::string> used;
  auto read = [&](const std::string& name, const Shape& shape) {
    used.insert(name);
    return hf.read(name, shape);
  };
  auto blank = [&](const std::string& name) {  // a zero host tensor of the parameter's shape
    Param* p = model.params().find(name);
    SY_CHECK(p && p->value.device().is_cpu(), "import: the model has no host parameter " << name);
    return Tensor::zeros(p->shape, DType::f32, host_ctx());
  };
  auto as_is = [&](const std::string& ours, const std::string& theirs, const Shape& shape) {
    staged.emplace_back(ours, read(theirs, shape));
  };
  as_is("wte", "model.embed_tokens.weight", {V, C});
  for (int l = 0; l < m.n_layers(); ++l) {
    const std::string h = "h" + std::to_string(l), at = "model.layers." + std::to_string(l);
    as_is(h + ".ln1.w", at + ".input_layernorm.weight", {C});
    Tensor qkv = blank(h + ".attn.qkv.w");  // (C, C + 2 KV): [q | k | v]
    put_transposed(qkv.f32(), C, C + 2 * KV, 0, read(at + ".self_attn.q_proj.weight", {C, C}));
    put_transposed(qkv.f32(), C, C + 2 * KV, C, read(at + ".self_attn.k_proj.weight", {KV, C}));
    put_transposed(qkv.f32(), C, C + 2 * KV, C + KV, read(at + ".self_attn.v_proj.weight", {KV, C}));
    staged.emplace_back(h + ".attn.qkv.w", qkv);
    Tensor proj = blank(h + ".attn.proj.w");
    put_transposed(proj.f32(), C, C, 0, read(at + ".self_attn.o_proj.weight", {C, C}));
    staged.emplace_back(h + ".attn.proj.w", proj);
    as_is(h + ".ln2.w", at + ".post_attention_layernorm.weight", {C});
    Tensor router = blank(h + ".moe.router.w");
    put_transposed(router.f32(), C, G, 0, read(at + ".block_sparse_moe.gate.weight", {G, C}));
    staged.emplace_back(h + ".moe.router.w", router);
    Tensor w1 = blank(h + ".moe.experts.w1"), w2 = blank(h + ".moe.experts.w2");  // (G, C, 2H), (G, H, C)
    for (int64_t g = 0; g < G; ++g) {
      const std::string ex = at + ".block_sparse_moe.experts." + std::to_string(g);
      float* w1g = w1.f32() + g * C * 2 * H;
      put_transposed(w1g, C, 2 * H, 0, read(ex + ".w1.weight", {H, C}));  // gate
      put_transposed(w1g, C, 2 * H, H, read(ex + ".w3.weight", {H, C}));  // up
      put_transposed(w2.f32() + g * H * C, H, C, 0, read(ex + ".w2.weight", {C, H}));  // down
    }
    staged.emplace_back(h + ".moe.experts.w1", w1);
    staged.emplace_back(h + ".moe.experts.w2", w2);
  }
  as_is("ln_f.w", "model.norm.weight", {C});
  if (!m.tie_embeddings()) {
    Tensor head = blank("head.w");
    put_transposed(head.f32(), C, V, 0, read("lm_head.weight", {V, C}));
    staged.emplace_back("head.w", head);
  } else if (hf.has("lm_head.weight")) {
    read("lm_head.weight", {V, C});  // (tied: the embedding's copy; read for its shape)
  }
  for (const std::string& name : hf.names())
    if (!used.count(name) && name.find("rotary_emb.inv_freq") == std::string::npos)  // (RoPE's, from rope_theta)
      throw ConfigError(dir + ": tensor " + name + " is not part of a Mixtral of this config.json");
  // Now the model changes: every parameter, once.
  std::set<std::string> written;
  for (auto& [name, value] : staged) {
    model.params().find(name)->value.copy_from(value, host_ctx());
    written.insert(name);
  }
  for (Param* p : model.params().all())
    SY_CHECK(written.count(p->name), "import: parameter " << p->name << " has no Hugging Face Mixtral tensor");
  model.params().refresh_shadows(model.ctx());
}

}  // namespace sy
