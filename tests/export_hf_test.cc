// The Hugging Face Mixtral export (runtime/hf_mixtral.h, docs/export_hf.md):
// every exported tensor element by element against the mapping table on a
// 2-layer, 2-expert model with hand-set weights (every element a distinct
// value, so a transposition, a swapped w1/w3 or a shifted head shows up); the
// bf16 file is the f32 one rounded; the independent forward in HF's
// conventions over the exported files reproduces the model's logits in fp32
// (4 experts top-2, untied and tied head); refusals of what Mixtral cannot
// express, one line each; an existing --out is refused and nothing is left.
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "temp_dir.h"
#include "examples/hf_mixtral_reference.h"
#include "runtime/checkpoint_store.h"
#include "runtime/hf_mixtral.h"
#include "runtime/trainer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

// d_model 8, 2 heads of 4, expert hidden 6, seq 8; `extra` appended.
Config mixtral_config(int experts, int top_k, const std::string& extra = "") {
  Config c = parse_config(R"(
    model { d_model: 8 n_layers: 2 n_heads: 2 ffn_hidden: 6 seq_len: 8
            position: ROPE rope_base: 100 norm: RMSNORM activation: SWIGLU bias: false }
    train { batch: 2 steps: 4 warmup_steps: 1 eval_batches: 1 seed: 3 lr: 0.01 }
    data { synthetic_bytes: 10000 }
    moe { renormalize: true dropless: true every_n_layers: 1 }
  )", "test");
  SY_CHECK(google::protobuf::TextFormat::MergeFromString(extra, &c), "bad test config " << extra);
  c.mutable_moe()->set_num_experts(experts);
  c.mutable_moe()->set_top_k(top_k);
  validate_config(c, "test");
  return c;
}

// Parameter p's element i := (p's index + 1) + i / 4096: distinct within and
// across parameters, exact in f32 and (for the bf16 check) not all
// representable in bf16.
void hand_set(Transformer& m) {
  int id = 0;
  for (Param* p : m.params().all()) {
    ++id;
    float* v = p->value.f32();
    for (int64_t i = 0; i < p->value.numel(); ++i) v[i] = static_cast<float>(id) + static_cast<float>(i) / 4096.f;
  }
}

const float* ours(Transformer& m, const std::string& name) { return m.params().find(name)->value.f32(); }

// The mapping table of docs/export_hf.md, written out again here: for each
// HF tensor, its shape and the value of element (r, c) read from our
// parameters (row-major; 1-d tensors have r = 0).
struct Expected {
  Shape shape;
  std::function<float(int64_t r, int64_t c)> at;
};

// K: the key and value width (C without grouped-query attention).
std::map<std::string, Expected> table(Transformer& m, int64_t C, int64_t V, int64_t G, int64_t H, int L, bool tied,
                                      int64_t K) {
  std::map<std::string, Expected> t;
  const float* wte = ours(m, "wte");
  t["model.embed_tokens.weight"] = {{V, C}, [=](int64_t r, int64_t c) { return wte[r * C + c]; }};
  for (int l = 0; l < L; ++l) {
    const std::string h = "h" + std::to_string(l) + ".", p = "model.layers." + std::to_string(l) + ".";
    const float *ln1 = ours(m, h + "ln1.w"), *ln2 = ours(m, h + "ln2.w"), *qkv = ours(m, h + "attn.qkv.w"),
                *proj = ours(m, h + "attn.proj.w"), *gate = ours(m, h + "moe.router.w"),
                *w1 = ours(m, h + "moe.experts.w1"), *w2 = ours(m, h + "moe.experts.w2");
    t[p + "input_layernorm.weight"] = {{C}, [=](int64_t, int64_t c) { return ln1[c]; }};
    t[p + "post_attention_layernorm.weight"] = {{C}, [=](int64_t, int64_t c) { return ln2[c]; }};
    // qkv.w is (C, C + 2K) = [Wq | Wk | Wv]; HF's q_proj is Wq^T (out, in).
    const int64_t W = C + 2 * K;
    t[p + "self_attn.q_proj.weight"] = {{C, C}, [=](int64_t r, int64_t c) { return qkv[c * W + r]; }};
    t[p + "self_attn.k_proj.weight"] = {{K, C}, [=](int64_t r, int64_t c) { return qkv[c * W + C + r]; }};
    t[p + "self_attn.v_proj.weight"] = {{K, C}, [=](int64_t r, int64_t c) { return qkv[c * W + C + K + r]; }};
    t[p + "self_attn.o_proj.weight"] = {{C, C}, [=](int64_t r, int64_t c) { return proj[c * C + r]; }};
    t[p + "block_sparse_moe.gate.weight"] = {{G, C}, [=](int64_t r, int64_t c) { return gate[c * G + r]; }};
    for (int64_t e = 0; e < G; ++e) {
      const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
      // experts.w1 is (G, C, 2H) = [W_gate | W_up] per expert; w2 is (G, H, C).
      t[x + "w1.weight"] = {{H, C}, [=](int64_t r, int64_t c) { return w1[e * C * 2 * H + c * 2 * H + r]; }};
      t[x + "w3.weight"] = {{H, C}, [=](int64_t r, int64_t c) { return w1[e * C * 2 * H + c * 2 * H + H + r]; }};
      t[x + "w2.weight"] = {{C, H}, [=](int64_t r, int64_t c) { return w2[e * H * C + c * C + r]; }};
    }
  }
  const float* lnf = ours(m, "ln_f.w");
  t["model.norm.weight"] = {{C}, [=](int64_t, int64_t c) { return lnf[c]; }};
  if (tied) {
    t["lm_head.weight"] = {{V, C}, [=](int64_t r, int64_t c) { return wte[r * C + c]; }};
  } else {
    const float* head = ours(m, "head.w");
    t["lm_head.weight"] = {{V, C}, [=](int64_t r, int64_t c) { return head[c * V + r]; }};
  }
  return t;
}

void check_against_table(const std::string& file, const std::map<std::string, Expected>& want, bool bf16) {
  SafetensorsReader rd(file);
  std::map<std::string, bool> seen;
  for (const TensorRecord& rec : rd.tensors()) {
    const auto it = want.find(rec.name);
    ASSERT_NE(it, want.end()) << "exported tensor not in the table: " << rec.name;
    seen[rec.name] = true;
    EXPECT_EQ(rec.dtype, bf16 ? "BF16" : "F32") << rec.name;
    ASSERT_EQ(rec.shape, it->second.shape) << rec.name;
    Tensor t = rd.read(rec);
    const int64_t rows = rec.shape.size() == 2 ? rec.shape[0] : 1, cols = rec.shape.back();
    int64_t wrong = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float e = it->second.at(r, c);
        const int64_t i = r * cols + c;
        const bool ok = bf16 ? t.data<bf16_t>()[i].bits == f32_to_bf16(e) : t.f32()[i] == e;
        if (!ok && wrong++ < 3)
          ADD_FAILURE() << rec.name << "[" << r << ", " << c << "] = "
                        << (bf16 ? bf16_to_f32(t.data<bf16_t>()[i].bits) : t.f32()[i]) << ", the table says " << e;
      }
    EXPECT_EQ(wrong, 0) << rec.name;
  }
  for (const auto& [name, e] : want) EXPECT_TRUE(seen.count(name)) << "missing from the export: " << name;
}

TEST(ExportHf, EveryTensorElementByElementAgainstTheTable) {
  for (const bool tied : {false, true}) {
    TempDir d;
    const Config cfg = mixtral_config(2, 2, tied ? "model { tie_embeddings: true }" : "");
    Transformer m(host_ctx(), cfg);
    hand_set(m);
    write_mixtral_export(d / "f32", cfg, m, DType::f32, "test");
    write_mixtral_export(d / "bf16", cfg, m, DType::bf16, "test");
    const auto want = table(m, 8, 256, 2, 6, 2, tied, 8);
    EXPECT_EQ(want.size(), 1u + 2 * (7 + 3 * 2) + 2);  // embed; per layer 2 norms, q k v o, gate, 3 per expert; norm, head
    check_against_table(d / "f32/model.safetensors", want, false);
    check_against_table(d / "bf16/model.safetensors", want, true);

    std::ifstream in(d / "f32/config.json");
    const nlohmann::json j = nlohmann::json::parse(in);
    EXPECT_EQ(j["model_type"], "mixtral");
    EXPECT_EQ(j["architectures"][0], "MixtralForCausalLM");
    EXPECT_EQ(j["vocab_size"], 256);
    EXPECT_EQ(j["hidden_size"], 8);
    EXPECT_EQ(j["intermediate_size"], 6);
    EXPECT_EQ(j["num_hidden_layers"], 2);
    EXPECT_EQ(j["num_attention_heads"], 2);
    EXPECT_EQ(j["num_key_value_heads"], 2);
    EXPECT_EQ(j["num_local_experts"], 2);
    EXPECT_EQ(j["num_experts_per_tok"], 2);
    EXPECT_EQ(j["max_position_embeddings"], 8);
    EXPECT_EQ(j["rope_theta"], 100.0);
    EXPECT_EQ(j["rms_norm_eps"], 1e-5);
    EXPECT_EQ(j["hidden_act"], "silu");
    EXPECT_EQ(j["tie_word_embeddings"], tied);
    EXPECT_EQ(j["torch_dtype"], "float32");
    EXPECT_NE(j["switchyard"]["vocabulary"].get<std::string>().find("bytes"), std::string::npos);
    std::ifstream in16(d / "bf16/config.json");
    EXPECT_EQ(nlohmann::json::parse(in16)["torch_dtype"], "bfloat16");
    EXPECT_EQ(std::distance(fs::directory_iterator(d.path), fs::directory_iterator()), 2) << "no temporary left";
  }
  // Grouped-query attention: 4 query heads of 2 over 2 key/value heads, so
  // k_proj and v_proj are (4, 8) slices of qkv.w (8, 16).
  TempDir d;
  const Config cfg = mixtral_config(2, 2, "model { n_heads: 4 n_kv_heads: 2 }");
  Transformer m(host_ctx(), cfg);
  hand_set(m);
  write_mixtral_export(d / "f32", cfg, m, DType::f32, "test");
  check_against_table(d / "f32/model.safetensors", table(m, 8, 256, 2, 6, 2, false, 4), false);
  std::ifstream in(d / "f32/config.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["num_attention_heads"], 4);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["head_dim"], 2);
}

// The model's own forward against the reference reading only the export.
void expect_logits_match(const Config& cfg, int train_steps) {
  TempDir d;
  Trainer tr(cfg, {});
  for (int s = 1; s <= train_steps; ++s) tr.step(s);  // norms and weights away from their initial values
  Transformer& m = tr.model();
  m.set_training(false);
  write_mixtral_export(d / "hf", cfg, m, DType::f32, "test");
  const HfMixtralReference ref(d / "hf");
  Batch b;
  const std::string text = "To be, or not!";
  for (int t = 0; t < 8; ++t) b.inputs.push_back(text[t]), b.targets.push_back(text[t + 1]);
  m.forward(b);
  const std::vector<float> want = m.logits().to_vector<float>(), got = ref.logits(b.inputs);
  ASSERT_EQ(got.size(), want.size());
  double diff = 0, top = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    top = std::max(top, std::fabs(static_cast<double>(want[i])));
  }
  std::cout << "  largest |logit| " << top << ", largest difference from the HF-convention forward " << diff << "\n";
  EXPECT_GT(top, 0.01) << "logits not trivially zero";
  EXPECT_LT(diff, 1e-5 * std::max(top, 1.0)) << "largest difference " << diff << ", largest logit " << top;
}

TEST(ExportHf, ForwardInHfConventionsMatchesTheLogits) {
  // 4 experts top-2 (so the top-k choice and renormalisation matter), init_std
  // 0.3 so that routing and attention are far from uniform.
  expect_logits_match(mixtral_config(4, 2, "model { init_std: 0.3 }"), 3);
  expect_logits_match(mixtral_config(4, 2, "model { init_std: 0.3 tie_embeddings: true }"), 3);
  expect_logits_match(mixtral_config(2, 1, "model { init_std: 0.3 } moe { expert_hidden: 5 }"), 2);
  // Grouped-query attention: 4 query heads over 2 key/value heads (HF's
  // num_key_value_heads, its k_proj and v_proj of 2 heads, repeat_kv).
  expect_logits_match(mixtral_config(4, 2, "model { init_std: 0.3 n_heads: 4 n_kv_heads: 2 }"), 3);
}

TEST(ExportHf, RefusesWhatMixtralCannotExpress) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model { position: LEARNED }", "t: model.position = LEARNED: Mixtral has rotary positions"},
      {"model { norm: LAYERNORM }", "t: model.norm = LAYERNORM: Mixtral's norms are RMSNorm"},
      {"model { activation: GELU }", "t: model.activation = GELU: Mixtral's experts are SwiGLU"},
      {"model { bias: true }", "t: model.bias = true: Mixtral's projections and experts have no biases"},
      {"moe { num_experts: 0 }", "t: moe.num_experts = 0: a dense model is not Mixtral-shaped"},
      {"moe { every_n_layers: 2 }", "t: moe.every_n_layers = 2: Mixtral has experts in every block"},
      {"moe { first_dense_layers: 1 }", "t: moe.first_dense_layers = 1: Mixtral has experts in every block"},
      {"moe { expert_groups: 4 groups_per_token: 2 }",
       "t: moe.expert_groups = 4: group-limited routing changes which experts are chosen and Mixtral's tokens "
       "choose among all"},
      {"moe { router: EXPERT_CHOICE }", "t: moe.router = EXPERT_CHOICE"},
      {"moe { score_function: SIGMOID }", "t: moe.score_function = SIGMOID"},
      {"moe { renormalize: false }", "t: moe.renormalize = false: Mixtral divides the top-k weights by their sum"},
      {"moe { shared_expert: true }", "t: moe.shared_expert = true"},
      {"moe { bias_balance_rate: 0.01 }", "t: moe.bias_balance_rate = 0.010000: balancing biases"},
      {"moe { sinkhorn_iters: 4 sinkhorn_at_eval: true }", "t: moe.sinkhorn_at_eval = true: its mean offsets"},
      {"moe { router: HASH top_k: 1 }", "t: moe.router = HASH"},
      {"moe { expert_hidden: [8, 8, 8, 16] }", "t: moe.expert_hidden = 8,...,16: Mixtral's experts all have one width"},
      {"moe { budget_mode: HARD }", "t: moe.budget_mode = HARD: a hard compute budget drops assignments"},
      {"depth { every_n_layers: 2 }", "t: depth.every_n_layers = 2"},
      {"attention { kind: BLOCK_TOPK }", "t: attention.kind = BLOCK_TOPK"},
  };
  for (const auto& [extra, want] : cases) {
    Config c = mixtral_config(4, 2);
    google::protobuf::TextFormat::MergeFromString(extra, &c);
    try {
      check_mixtral_expressible(c, "t");
      ADD_FAILURE() << extra << " was not refused";
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind(want, 0), 0u) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << "one line: " << what;
      EXPECT_NE(what.find("cannot be exported to Hugging Face Mixtral"), std::string::npos) << what;
    }
  }
  EXPECT_NO_THROW(check_mixtral_expressible(mixtral_config(4, 2), "t"));
  // Capacity-limited routing in training is exported, and said.
  Config capped = mixtral_config(4, 2, "moe { dropless: false }");
  EXPECT_NO_THROW(check_mixtral_expressible(capped, "t"));
  ASSERT_EQ(mixtral_export_notes(capped).size(), 1u);
  EXPECT_NE(mixtral_export_notes(capped)[0].find("Mixtral drops no token"), std::string::npos);
  EXPECT_TRUE(mixtral_export_notes(mixtral_config(4, 2)).empty());
}

// router_aux_loss_coef is load_balance_coef x L / k (transformers pools the
// layers' choices, k at balance), written as the shortest decimal the import
// reads back as the same float: 0.01 at L 10, k 8 is "0.0125", and comes back
// 0.01f exactly (x L / k in float would write 0.012499999, read back an ulp off).
TEST(ExportHf, BalanceCoefficientRoundTripsAtTransformersScale) {
  TempDir d;
  int n = 0;
  for (const int L : {2, 7, 10})
    for (const int k : {1, 2, 8})
      for (const float a : {0.01f, 0.003f, 0.02f, 0.1f}) {
        SCOPED_TRACE("L " + std::to_string(L) + " k " + std::to_string(k) + " coef " + std::to_string(a));
        Config c = mixtral_config(8, k, "model { n_layers: " + std::to_string(L) + " }");
        c.mutable_moe()->set_load_balance_coef(a);
        const fs::path dir = d / ("m" + std::to_string(n++));
        fs::create_directory(dir);
        std::ofstream(dir / "config.json") << mixtral_config_json(c, "float32");
        const nlohmann::json j = nlohmann::json::parse(std::ifstream(dir / "config.json"));
        EXPECT_NEAR(j["router_aux_loss_coef"].get<double>() * k / L, a, 1e-6 * a) << "the scale";
        if (L == 10 && k == 8 && a == 0.01f) EXPECT_EQ(j["router_aux_loss_coef"].dump(), "0.0125");
        const Config back = mixtral_config_from_json(dir.string(), parse_config("", "defaults"));
        EXPECT_EQ(back.moe().load_balance_coef(), a) << "bit for bit";
        EXPECT_EQ(back.moe().z_loss_coef(), 0.f);
      }
}

TEST(ExportHf, ExistingOutputIsRefusedAndNothingIsLeft) {
  TempDir d;
  const Config cfg = mixtral_config(2, 2);
  Transformer m(host_ctx(), cfg);
  fs::create_directory(d / "out");
  try {
    write_mixtral_export(d / "out", cfg, m, DType::f32, "test");
    ADD_FAILURE() << "an existing directory was overwritten";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), d / "out" + ": exists; the export writes a new directory");
  }
  EXPECT_TRUE(fs::is_empty(d / "out"));
  EXPECT_EQ(std::distance(fs::directory_iterator(d.path), fs::directory_iterator()), 1);
}

}  // namespace
}  // namespace sy
