// Config loading: defaults, overrides, and one clear error per kind of bad input.
#include <gtest/gtest.h>

#include <filesystem>

#include "runtime/config.h"
#include "core/error.h"

namespace sy {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "error must be one line: " << m;
    return m;
  }
  ADD_FAILURE() << "expected a ConfigError";
  return "";
}

Config parse_ok(const std::string& text) {
  Config c = parse_config(text, "t.pbtxt");
  validate_config(c, "t.pbtxt");
  return c;
}

void expect_invalid(const std::string& text, const std::string& needle) {
  std::string m = error_of([&] {
    Config c = parse_config(text, "t.pbtxt");
    validate_config(c, "t.pbtxt");
  });
  EXPECT_NE(m.find(needle), std::string::npos) << "message: " << m << "\nexpected to contain: " << needle;
}

TEST(Config, DefaultsAreValid) {
  Config c = parse_ok("");
  EXPECT_EQ(c.model().vocab_size(), 256);
  EXPECT_EQ(c.model().d_model(), 64);
}

TEST(Config, ShippedConfigsLoad) {
  for (const auto& e : std::filesystem::directory_iterator(SY_SOURCE_DIR "/configs")) {
    if (e.path().extension() != ".pbtxt") continue;
    SCOPED_TRACE(e.path().string());
    // Configs that read ../shared/data need it beside the checkout.
    try {
      load_config(e.path().string());
    } catch (const ConfigError& err) {
      std::string m = err.what();
      if (m.find("data.path") == std::string::npos) ADD_FAILURE() << m;
    }
  }
}

TEST(Config, UnknownFieldNamesFileLineAndAllowedFields) {
  expect_invalid("model {\n  d_modl: 3\n}\n", "t.pbtxt:2:");
  expect_invalid("model {\n  d_modl: 3\n}\n", "d_modl");
  expect_invalid("model {\n  d_modl: 3\n}\n", "allowed: vocab_size, d_model");
}

TEST(Config, WrongTypeNamesField) {
  expect_invalid("train {\n batch: \"many\"\n}\n", "t.pbtxt:2:");
  expect_invalid("train {\n batch: \"many\"\n}\n", "field 'batch'");
  expect_invalid("train { lr: abc }", "field 'train'");
}

TEST(Config, OutOfRangeNamesFieldValueAndRange) {
  expect_invalid("model { d_model: 0 }", "t.pbtxt: model.d_model = 0: must be in [8, 8192]");
  expect_invalid("train { lr: 2 }", "train.lr = 2: must be in (0, 1]");
  expect_invalid("train { beta2: 1 }", "train.beta2 = 1: must be in [0, 1)");
  expect_invalid("model { vocab_size: 100 }", "model.vocab_size = 100: must be 256");
  expect_invalid("data { val_fraction: 0 }", "data.val_fraction = 0");
  expect_invalid("train { steps: 10 warmup_steps: 11 }", "train.warmup_steps = 11: must be in [0, 10]");
  expect_invalid("moe { num_experts: 4 router_noise: -1 }", "moe.router_noise = -1: must be in [0, 10]");
  expect_invalid("moe { num_experts: 4 load_balance_tokens: 100 }",
                 "moe.load_balance_tokens = 100: must divide train.batch * model.seq_len = ");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE router_noise_kind: GUMBEL }",
                 "moe.router_noise_kind = GUMBEL: Gumbel draws pick a token's expert; they apply to TOKENS_CHOOSE only");
}

TEST(Config, BackendCudaOnlyWhereBuilt) {
#ifdef SY_WITH_CUDA
  EXPECT_EQ(parse_ok("backend: CUDA").backend(), switchyard::Config::CUDA);
#else
  expect_invalid("backend: CUDA", "t.pbtxt: backend = CUDA: this build has no CUDA backend");
#endif
  EXPECT_EQ(parse_ok("backend: CPU").backend(), switchyard::Config::CPU);
}

TEST(Config, InconsistentSizes) {
  expect_invalid("model { d_model: 64 n_heads: 5 }",
                 "model.d_model = 64: must be divisible by model.n_heads = 5");
}

TEST(Config, MissingDataFile) {
  expect_invalid("data { source: TEXT_FILE path: \"/nonexistent/x.txt\" }",
                 "data.path = /nonexistent/x.txt: no such file");
  expect_invalid("data { source: TEXT_FILE }", "data.path = \"\": required");
}

TEST(Config, SetOverridesAnyField) {
  Config c = parse_ok("");
  apply_override(c, "model.d_model=128");
  apply_override(c, "train.lr=0.01");
  apply_override(c, "data.source=TEXT_FILE");
  apply_override(c, "train.seed=18446744073709551615");
  apply_override(c, "data.path=../some dir/file.txt");
  EXPECT_EQ(c.data().path(), "../some dir/file.txt");
  EXPECT_EQ(c.model().d_model(), 128);
  EXPECT_FLOAT_EQ(c.train().lr(), 0.01f);
  EXPECT_EQ(c.data().source(), switchyard::DataConfig::TEXT_FILE);
  EXPECT_EQ(c.train().seed(), 18446744073709551615ull);
}

TEST(Config, BadOverrides) {
  Config c;
  EXPECT_NE(error_of([&] { apply_override(c, "model.d_modl=3"); }).find("--set model.d_modl=3: no field 'd_modl' in model (allowed: vocab_size"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "model.d_model=abc"); }).find("'abc' is not a valid int32 for model.d_model"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "model=3"); }).find("is a message"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "model.d_model"); }).find("expected path.to.field=value"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "model.d_model.x=1"); }).find("not a message"), std::string::npos);
}

TEST(Config, MissingFile) {
  EXPECT_NE(error_of([] { load_config("/nonexistent.pbtxt"); }).find("/nonexistent.pbtxt: cannot open"), std::string::npos);
}

}  // namespace
}  // namespace sy
