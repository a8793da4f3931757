#include "runtime/hf_mixtral.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "ops/rmsnorm.h"
#include "runtime/checkpoint_store.h"
#include "runtime/moe_layer.h"

namespace sy {

namespace fs = std::filesystem;
using switchyard::AttentionConfig;
using switchyard::ModelConfig;
using switchyard::MoeConfig;

namespace {

[[noreturn]] void refuse(const std::string& source, const std::string& field, const std::string& value,
                         const std::string& why) {
  throw ConfigError(source + ": " + field + " = " + value + ": " + why + "; cannot be exported to Hugging Face Mixtral");
}

// A config float as the shortest decimal that reads back as the same float
// (0.01f as 0.01, not 0.009999999776482582).
double shortest(float f) {
  for (int digits = 1; digits < 9; ++digits) {
    char b[32];
    std::snprintf(b, sizeof b, "%.*g", digits, f);
    if (std::strtof(b, nullptr) == f) return std::strtod(b, nullptr);
  }
  return f;
}

// transformers' router_aux_loss_coef for our load_balance_coef a: a L / k,
// as the shortest decimal that the import's a' = coef k / L (double, then
// float) reads back as a itself.
double aux_loss_coef(float a, int64_t L, int64_t k) {
  const double x = static_cast<double>(a) * static_cast<double>(L) / static_cast<double>(k);
  for (int digits = 1; digits <= 17; ++digits) {
    char b[40];
    std::snprintf(b, sizeof b, "%.*g", digits, x);
    const double v = std::strtod(b, nullptr);
    if (static_cast<float>(v * static_cast<double>(k) / static_cast<double>(L)) == a) return v;
  }
  return x;
}

// Every expert's width (check_mixtral_expressible refuses unequal widths).
int64_t expert_hidden(const Config& cfg) {
  return expert_hidden_sizes(cfg.moe(), cfg.model().ffn_hidden()).at(0);
}

// A transposed copy of columns [c0, c0 + cols) of a row-major (rows, ld) matrix: (cols, rows).
Tensor transposed_columns(const float* src, int64_t rows, int64_t ld, int64_t c0, int64_t cols) {
  Tensor t = Tensor::empty({cols, rows}, DType::f32, host_ctx());
  float* d = t.f32();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) d[c * rows + r] = src[r * ld + c0 + c];
  return t;
}

}  // namespace

void check_mixtral_expressible(const Config& cfg, const std::string& source) {
  const auto& m = cfg.model();
  const auto& e = cfg.moe();
  if (m.position() != ModelConfig::ROPE)
    refuse(source, "model.position", "LEARNED", "Mixtral has rotary positions and no position table");
  if (m.norm() != ModelConfig::RMSNORM) refuse(source, "model.norm", "LAYERNORM", "Mixtral's norms are RMSNorm");
  if (m.activation() != ModelConfig::SWIGLU)
    refuse(source, "model.activation", "GELU", "Mixtral's experts are SwiGLU (w2(silu(w1 x) * w3 x))");
  if (m.bias()) refuse(source, "model.bias", "true", "Mixtral's projections and experts have no biases");
  if (e.num_experts() == 0) refuse(source, "moe.num_experts", "0", "a dense model is not Mixtral-shaped");
  if (e.every_n_layers() != 1)
    refuse(source, "moe.every_n_layers", std::to_string(e.every_n_layers()),
           "Mixtral has experts in every block (a dense FFN block has no Mixtral name)");
  if (e.first_dense_layers() != 0)
    refuse(source, "moe.first_dense_layers", std::to_string(e.first_dense_layers()),
           "Mixtral has experts in every block (a dense FFN block has no Mixtral name)");
  if (e.router() != MoeConfig::TOKENS_CHOOSE)
    refuse(source, "moe.router", MoeConfig::Router_Name(e.router()), "Mixtral's tokens choose their experts by a learned router");
  if (e.score_function() != MoeConfig::SOFTMAX)
    refuse(source, "moe.score_function", "SIGMOID", "Mixtral's router is a softmax over the experts");
  if (!e.renormalize())
    refuse(source, "moe.renormalize", "false", "Mixtral divides the top-k weights by their sum");
  if (e.shared_expert()) refuse(source, "moe.shared_expert", "true", "Mixtral has no shared expert");
  const std::vector<int64_t> widths = expert_hidden_sizes(e, m.ffn_hidden());
  for (int64_t h : widths)
    if (h != widths[0])
      refuse(source, "moe.expert_hidden", std::to_string(widths[0]) + ",...," + std::to_string(h),
             "Mixtral's experts all have one width (intermediate_size)");
  if (e.budget_mode() != MoeConfig::SOFT)
    refuse(source, "moe.budget_mode", MoeConfig::BudgetMode_Name(e.budget_mode()),
           "a hard compute budget drops assignments and Mixtral's routing has no budget");
  if (e.bias_balance_rate() > 0)
    refuse(source, "moe.bias_balance_rate", std::to_string(e.bias_balance_rate()),
           "balancing biases change which experts are chosen and Mixtral's router has none");
  if (e.sinkhorn_at_eval())
    refuse(source, "moe.sinkhorn_at_eval", "true",
           "its mean offsets change which experts are chosen and Mixtral's router has none");
  if (e.expert_groups() > 0)
    refuse(source, "moe.expert_groups", std::to_string(e.expert_groups()),
           "group-limited routing changes which experts are chosen and Mixtral's tokens choose among all");
  if (cfg.depth().every_n_layers() > 0)
    refuse(source, "depth.every_n_layers", std::to_string(cfg.depth().every_n_layers()),
           "Mixtral runs every block on every token");
  if (cfg.attention().kind() != AttentionConfig::DENSE)
    refuse(source, "attention.kind", AttentionConfig::Kind_Name(cfg.attention().kind()),
           "Mixtral's attention is dense and causal");
}

std::vector<std::string> mixtral_export_notes(const Config& cfg) {
  std::vector<std::string> notes;
  const auto& e = cfg.moe();
  if (!e.dropless()) {
    std::ostringstream os;
    os << "trained with capacity-limited routing (moe.capacity_factor " << e.capacity_factor()
       << ", capacity_factor_eval " << e.capacity_factor_eval()
       << "): tokens over an expert's capacity skipped it; Mixtral drops no token, so the export computes what "
          "this model computes with moe.dropless: true";
    notes.push_back(os.str());
  }
  return notes;
}

namespace {
// What config.json's vocabulary note says of bos_token_id and eos_token_id.
std::string special_tokens(const switchyard::DataConfig& d) {
  if (d.bos_id() < 0 && d.eos_id() < 0) return "no special tokens";
  std::string s = d.bos_id() >= 0 ? "bos_token_id before every text" : "";
  if (d.eos_id() >= 0) s += std::string(s.empty() ? "" : ", ") + "eos_token_id after every text";
  return s + ", no other special tokens";
}
}  // namespace

std::string mixtral_config_json(const Config& cfg, const std::string& torch_dtype) {
  const auto& m = cfg.model();
  const auto& e = cfg.moe();
  nlohmann::ordered_json j;
  j["architectures"] = {"MixtralForCausalLM"};
  j["model_type"] = "mixtral";
  j["vocab_size"] = m.vocab_size();
  j["hidden_size"] = m.d_model();
  j["intermediate_size"] = expert_hidden(cfg);
  j["num_hidden_layers"] = m.n_layers();
  j["num_attention_heads"] = m.n_heads();
  j["num_key_value_heads"] = kv_heads(m);
  j["head_dim"] = m.d_model() / m.n_heads();
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = m.seq_len();
  j["rms_norm_eps"] = 1e-5;  // ops/rmsnorm.h's kRmsNormEps
  static_assert(ops::kRmsNormEps == 1e-5f, "config.json's rms_norm_eps is ops::kRmsNormEps");
  j["rope_theta"] = shortest(m.rope_base());
  j["num_local_experts"] = e.num_experts();
  j["num_experts_per_tok"] = e.top_k();
  j["sliding_window"] = nullptr;
  j["attention_dropout"] = 0.0;
  j["router_jitter_noise"] = 0.0;
  // transformers' balance loss is one over all layers' choices pooled, k at
  // balance; ours one a layer, 1 at balance, summed: the same scale at
  // coef L / k (the same gradient where every layer's load is the pooled
  // one; transformers uses it with output_router_logits only).
  j["router_aux_loss_coef"] = aux_loss_coef(e.load_balance_coef(), m.n_layers(), e.top_k());
  j["output_router_logits"] = false;
  j["initializer_range"] = shortest(m.init_std());
  j["tie_word_embeddings"] = m.tie_embeddings();
  if (cfg.data().bos_id() >= 0) j["bos_token_id"] = cfg.data().bos_id();  // (data.bos_id: before every text)
  else j["bos_token_id"] = nullptr;
  if (cfg.data().eos_id() >= 0) j["eos_token_id"] = cfg.data().eos_id();  // (data.eos_id: ends a text)
  else j["eos_token_id"] = nullptr;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype;
  nlohmann::ordered_json sy;
  sy["vocabulary"] =
      cfg.data().source() == switchyard::DataConfig::TOKEN_FILES
          ? "token ids of the training shards' tokenizer (data.tokenizer: " +
                (cfg.data().tokenizer().empty() ? std::string("not named") : cfg.data().tokenizer()) +
                "); not exported: ship that SentencePiece model beside these files; " +
                special_tokens(cfg.data())
          : "bytes: token id = byte value (0-255) of UTF-8 or any other text; no tokenizer files, no special tokens";
  sy["trained_seq_len"] = m.seq_len();
  const auto notes = mixtral_export_notes(cfg);
  sy["routing"] = notes.empty() ? "dropless, as Mixtral" : notes.front();
  j["switchyard"] = sy;
  return j.dump(2) + "\n";
}

NamedTensors mixtral_tensors(const Config& cfg, Transformer& model) {
  const auto& m = cfg.model();
  const int64_t C = m.d_model(), V = m.vocab_size(), G = cfg.moe().num_experts(), H = expert_hidden(cfg);
  const int64_t KV = C / m.n_heads() * kv_heads(m);
  std::set<std::string> used;
  auto host = [&](const std::string& name, const Shape& shape) {
    Param* p = model.params().find(name);
    SY_CHECK(p, "export: the model has no parameter " << name);
    SY_CHECK(p->shape == shape, "export: " << name << " is " << shape_str(p->shape) << ", expected " << shape_str(shape)
                                           << " (all experts: expert_parallel 1)");
    used.insert(name);
    return p->value.to(host_ctx());
  };
  NamedTensors out;
  auto as_is = [&](const std::string& hf, const std::string& ours, const Shape& shape) {
    out.emplace_back(hf, host(ours, shape).clone());
  };
  as_is("model.embed_tokens.weight", "wte", {V, C});
  for (int l = 0; l < m.n_layers(); ++l) {
    const std::string h = "h" + std::to_string(l), hf = "model.layers." + std::to_string(l);
    as_is(hf + ".input_layernorm.weight", h + ".ln1.w", {C});
    // [q | k | v]: k and v of KV columns each (grouped-query attention's
    // n_kv_heads heads; C without grouping), as HF's k_proj and v_proj.
    const Tensor qkv = host(h + ".attn.qkv.w", {C, C + 2 * KV});
    out.emplace_back(hf + ".self_attn.q_proj.weight", transposed_columns(qkv.f32(), C, C + 2 * KV, 0, C));
    out.emplace_back(hf + ".self_attn.k_proj.weight", transposed_columns(qkv.f32(), C, C + 2 * KV, C, KV));
    out.emplace_back(hf + ".self_attn.v_proj.weight", transposed_columns(qkv.f32(), C, C + 2 * KV, C + KV, KV));
    const Tensor proj = host(h + ".attn.proj.w", {C, C});
    out.emplace_back(hf + ".self_attn.o_proj.weight", transposed_columns(proj.f32(), C, C, 0, C));
    as_is(hf + ".post_attention_layernorm.weight", h + ".ln2.w", {C});
    const Tensor gate = host(h + ".moe.router.w", {C, G});
    out.emplace_back(hf + ".block_sparse_moe.gate.weight", transposed_columns(gate.f32(), C, G, 0, G));
    const Tensor w1 = host(h + ".moe.experts.w1", {G, C, 2 * H}), w2 = host(h + ".moe.experts.w2", {G, H, C});
    for (int64_t g = 0; g < G; ++g) {
      const std::string ex = hf + ".block_sparse_moe.experts." + std::to_string(g);
      const float* w1g = w1.f32() + g * C * 2 * H;
      out.emplace_back(ex + ".w1.weight", transposed_columns(w1g, C, 2 * H, 0, H));  // gate
      out.emplace_back(ex + ".w2.weight", transposed_columns(w2.f32() + g * H * C, H, C, 0, C));  // down
      out.emplace_back(ex + ".w3.weight", transposed_columns(w1g, C, 2 * H, H, H));  // up
    }
  }
  as_is("model.norm.weight", "ln_f.w", {C});
  if (m.tie_embeddings()) {
    as_is("lm_head.weight", "wte", {V, C});
  } else {
    const Tensor head = host("head.w", {C, V});
    out.emplace_back("lm_head.weight", transposed_columns(head.f32(), C, V, 0, V));
  }
  for (Param* p : model.params().all())
    SY_CHECK(used.count(p->name), "export: parameter " << p->name << " has no Hugging Face Mixtral name");
  return out;
}

std::vector<std::string> write_mixtral_export(const std::string& out_dir, const Config& cfg, Transformer& model,
                                              DType dtype, const std::string& source_note) {
  SY_CHECK(dtype == DType::f32 || dtype == DType::bf16, "export: dtype f32 or bf16");
  if (fs::exists(out_dir)) throw ConfigError(out_dir + ": exists; the export writes a new directory");
  fs::path final_path = fs::path(out_dir).lexically_normal();
  if (final_path.filename().empty()) final_path = final_path.parent_path();  // "out/"
  const fs::path parent = final_path.has_parent_path() ? final_path.parent_path() : fs::path(".");
  if (!fs::is_directory(parent)) throw ConfigError(parent.string() + ": no such directory (the export's parent)");
  const fs::path tmp = parent / ("." + final_path.filename().string() + ".tmp");
  std::error_code made;
  fs::remove_all(tmp, made);
  if (!made) fs::create_directory(tmp, made);
  if (made)  // (e.g. a parent under /proc: the --out named, not the staging directory's path)
    throw ConfigError(out_dir + ": cannot create the export's directory in " + parent.string() + ": " + made.message());
  try {
    NamedTensors ts = mixtral_tensors(cfg, model);
    if (dtype == DType::bf16)
      for (auto& [name, t] : ts) t = t.to(DType::bf16);
    write_safetensors((tmp / "model.safetensors").string(), ts,
                      {{"format", "pt"}, {"source", source_note}});
    std::ofstream js(tmp / "config.json", std::ios::trunc);
    js << mixtral_config_json(cfg, dtype == DType::bf16 ? "bfloat16" : "float32");
    js.close();
    if (!js) throw ConfigError((tmp / "config.json").string() + ": write failed");
    fs::rename(tmp, final_path);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return {"config.json", "model.safetensors"};
}

}  // namespace sy
