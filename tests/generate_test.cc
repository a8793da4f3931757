// What runtime/generate.h's causal() promises: where it says a config is
// causal, the logits at positions 0..p of an evaluation-mode window do not
// change when the tokens after p do (generation pads the window after its
// context, so padding never reaches a drawn token); and where it says not,
// the reason is real: a top-2 router under a capacity that binds lets a later
// token take an expert's last slot before an earlier token's second choice
// (unless the slots go token by token: moe.slot_priority TOKEN_ORDER).
//
// "Do not change" is bit for bit where the BLAS rounds a GEMM's row the
// same whatever the number of rows. OpenBLAS 0.3.21's Haswell and Zen sgemm
// kernels do not (a row's result at 5 rows differs from the same row's at
// 33): an expert's GEMM takes as many rows as tokens chose it, so a redrawn
// tail moves an earlier token's logits by rounding, with nothing of the
// future in them. ctest runs these tests on OpenBLAS's Sandybridge kernels
// (tests/CMakeLists.txt), which round a row alike at every count; where the
// probe below still finds the rows depending on the count (an OpenBLAS
// built for one CPU ignores the switch), logits count as unchanged within
// 1e-5 of their largest magnitude, far below what a leak moves.
#include <cblas.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/rng.h"
#include "runtime/generate.h"

namespace sy {
namespace {

// Whether this BLAS's sgemm rounds the first 5 rows of a product
// differently at 5 rows than at 33.
bool gemm_rows_depend_on_count() {
  const int K = 16, N = 24;
  std::vector<float> a(33 * K), b(K * N), c5(5 * N), c33(33 * N);
  Rng rng(5);
  for (float& x : a) x = static_cast<float>(rng.normal());
  for (float& x : b) x = static_cast<float>(rng.normal());
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 5, N, K, 1.f, a.data(), K, b.data(), N, 0.f, c5.data(), N);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 33, N, K, 1.f, a.data(), K, b.data(), N, 0.f, c33.data(), N);
  return std::memcmp(c5.data(), c33.data(), c5.size() * sizeof(float)) != 0;
}

// Whether `after` differs from `before`: in any bit, or (where the BLAS's
// rows depend on their count) by more than 1e-5 of before's largest value.
bool changed(const std::vector<float>& before, const std::vector<float>& after) {
  static const bool rounding = [] {
    const bool r = gemm_rows_depend_on_count();
    if (r) std::printf("note: this BLAS's GEMM rows depend on the row count: logits compared within 1e-5\n");
    return r;
  }();
  if (!rounding) return std::memcmp(before.data(), after.data(), before.size() * sizeof(float)) != 0;
  float scale = 0, diff = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    scale = std::max(scale, std::fabs(before[i]));
    diff = std::max(diff, std::fabs(after[i] - before[i]));
    if (std::isnan(after[i]) != std::isnan(before[i])) return true;
  }
  return diff > 1e-5f * scale;
}

Config config(const std::string& extra, int layers = 2) {
  Config c = parse_config(R"(
    model { d_model: 16 n_heads: 2 ffn_hidden: 24 seq_len: 32 init_std: 0.5 }
    train { seed: 7 }
  )" + extra, "test");
  c.mutable_model()->set_n_layers(layers);
  validate_config(c, "test");
  return c;
}

// Whether the logits of positions [0, p] change when positions (p, T) are
// redrawn, over a few prefixes p and tails; in evaluation mode, or in
// training mode (the training capacity factor).
bool future_reaches_the_past(const Config& cfg, bool training = false) {
  Transformer model(host_ctx(), cfg);
  const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size();
  Rng rng(3);
  Batch b;
  for (int64_t t = 0; t < T; ++t) {
    b.inputs.push_back(static_cast<int32_t>(rng.below(V)));
    b.targets.push_back(0);
  }
  if (model.needs_calibration()) model.calibrate(b);
  model.set_training(training);
  for (int64_t p : {3, 12, 20}) {
    model.forward(b);
    const std::vector<float> before = model.logits().rows(0, p + 1).to_vector<float>();
    for (int tail = 0; tail < 8; ++tail) {
      Batch c = b;
      for (int64_t t = p + 1; t < T; ++t) c.inputs[t] = static_cast<int32_t>(rng.below(tail < 4 ? V : 2));
      model.forward(c);
      const std::vector<float> after = model.logits().rows(0, p + 1).to_vector<float>();
      if (changed(before, after)) return true;
    }
  }
  return false;
}

TEST(Generate, CausalConfigsIgnoreWhatFollows) {
  // Four blocks: MoE top-1 under a binding capacity in block 2 only, depth
  // routing in blocks 1 and 3 (none of them routes the MoE layer's tokens).
  {
    const Config cfg = config("moe { num_experts: 4 top_k: 1 capacity_factor_eval: 0.5 every_n_layers: 3 } "
                              "depth { every_n_layers: 2 }", 4);
    std::string why;
    ASSERT_TRUE(causal(cfg, &why)) << why;
    EXPECT_FALSE(future_reaches_the_past(cfg));
  }
  for (const std::string extra : {
           "",
           "moe { num_experts: 4 top_k: 1 capacity_factor_eval: 0.5 every_n_layers: 1 }",
           "moe { num_experts: 4 top_k: 2 dropless: true every_n_layers: 1 }",
           "moe { num_experts: 4 top_k: 2 capacity_factor_eval: 2 every_n_layers: 1 }",  // C >= N
           "moe { num_experts: 4 top_k: 2 capacity_factor_eval: 0.5 slot_priority: TOKEN_ORDER every_n_layers: 1 }",
           "moe { num_experts: 8 top_k: 3 capacity_factor_eval: 0.5 slot_priority: TOKEN_ORDER expert_groups: 4 "
           "groups_per_token: 2 every_n_layers: 1 }",
           "moe { num_experts: 8 top_k: 2 dropless: true expert_groups: 4 groups_per_token: 1 every_n_layers: 1 }",
           "moe { num_experts: 4 top_k: 2 dropless: true budget_mode: HARD_CAUSAL budget: 1.5 every_n_layers: 1 }",
           "moe { num_experts: 4 top_k: 1 dropless: true every_n_layers: 1 } depth { every_n_layers: 2 tau: 0.5 }",
           "attention { kind: ROUTED num_routing_heads: 1 num_clusters: 4 window: 4 dropless: false }",
       }) {
    SCOPED_TRACE(extra);
    const Config cfg = config(extra);
    std::string why;
    ASSERT_TRUE(causal(cfg, &why)) << why;
    EXPECT_FALSE(future_reaches_the_past(cfg));
  }
}

// The same in a training window: at top-2 under the training capacity a
// later token's first choice can take an earlier token's second-choice slot
// (POSITION), which token-by-token slots (TOKEN_ORDER) rule out.
TEST(Generate, TokenOrderSlotsAreCausalInTrainingToo) {
  const std::string moe = "moe { num_experts: 4 top_k: 2 capacity_factor: 0.5 every_n_layers: 1 slot_priority: ";
  EXPECT_FALSE(future_reaches_the_past(config(moe + "TOKEN_ORDER }"), /*training=*/true));
  EXPECT_TRUE(future_reaches_the_past(config(moe + "POSITION }"), /*training=*/true));
}

// A grouped balance loss (groups of two windows here) over a generation
// window, which is shorter: the router takes the batch-wide loss there (its
// value trains nothing), where the groups' tiling check stopped the
// generation; cached or not.
TEST(Generate, GroupedBalanceDoesNotStopAGeneration) {
  const Config cfg = config("moe { num_experts: 4 every_n_layers: 1 load_balance_tokens: 64 }");
  for (bool cached : {true, false}) {
    Transformer model(host_ctx(), cfg);
    model.set_training(false);
    EXPECT_EQ(generate_ids(model, cfg, {1, 2, 3}, 4, ops::SamplingParams{}, 5, nullptr, cached).size(), 7u)
        << "cached " << cached;
  }
}

// A non-finite forward is said, with where, cached or not (every
// probability NaN fell through the draw to the last candidate: id V - 1).
TEST(Generate, NonFiniteLogitsAreRefused) {
  const Config cfg = config("");
  for (bool cached : {true, false}) {
    Transformer model(host_ctx(), cfg);
    model.set_training(false);
    model.params().find("wte")->value.f32()[1 * 16] = NAN;  // token 1's embedding (d_model 16)
    try {
      generate_ids(model, cfg, {1, 2, 3}, 4, ops::SamplingParams{}, 5, nullptr, cached);
      ADD_FAILURE() << "generated from NaN logits, cached " << cached;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("the next-token logits after 3 tokens are not finite"), std::string::npos)
          << e.what();
    }
  }
}

// The temperature divides the logits: at 100 a token 110 below the best
// keeps its share exp(-1.1) / (1 + exp(-1.1)) = 0.2497, which the
// probabilities rounded to f32 first (0 for it) had lost; at 0 and 1 the
// softmax itself.
TEST(Generate, TemperatureDividesTheLogits) {
  const Tensor logits = Tensor::from_host<float>({0.f, -110.f}, {1, 2});
  EXPECT_NEAR(next_token_probs(logits, 100.f).f32()[1], std::exp(-1.1) / (1 + std::exp(-1.1)), 1e-6);
  for (float t : {0.f, 1.f}) {
    const Tensor p = next_token_probs(Tensor::from_host<float>({1.f, 2.f}, {1, 2}), t);
    EXPECT_NEAR(p.f32()[1], 1 / (1 + std::exp(-1.0)), 1e-6) << t;
  }
  // The draw takes it once: id 0 holds 0.75 of the mass at 100 (0.503 were
  // the temperature applied twice, 10000), so u 0.6 draws id 0, u 0.8 id 1.
  ops::SamplingParams sp;
  sp.temperature = 100.f;
  EXPECT_EQ(draw_next(logits, sp, 0.6f), 0);
  EXPECT_EQ(draw_next(logits, sp, 0.8f), 1);
  sp.temperature = 0.f;
  EXPECT_EQ(draw_next(logits, sp, 0.99f), 0);  // greedy
}

TEST(Generate, NonCausalConfigsSayWhyAndDo) {
  struct Case {
    std::string extra, why;
  };
  for (const Case& k : std::vector<Case>{
           {"moe { num_experts: 4 top_k: 2 capacity_factor_eval: 0.5 every_n_layers: 1 }",
            "moe.top_k >= 2 under a capacity that can bind"},
           {"moe { num_experts: 4 top_k: 1 capacity_factor_eval: 0.5 every_n_layers: 1 } depth { every_n_layers: 2 }",
            "a depth-routed block's MoE capacity counts the tokens the block keeps"},
           {"moe { num_experts: 4 router: EXPERT_CHOICE every_n_layers: 1 }", "EXPERT_CHOICE looks at the whole window"},
           {"attention { kind: ROUTED num_routing_heads: 1 num_clusters: 4 window: 4 dropless: false "
            "capacity_factor: 0.5 } depth { every_n_layers: 2 }",
            "a depth-routed block's routed-attention cluster capacity"},
       }) {
    SCOPED_TRACE(k.extra);
    const Config cfg = config(k.extra);
    std::string why;
    ASSERT_FALSE(causal(cfg));
    causal(cfg, &why);
    EXPECT_NE(why.find(k.why), std::string::npos) << why;
    EXPECT_TRUE(future_reaches_the_past(cfg));
  }
}

}  // namespace
}  // namespace sy
