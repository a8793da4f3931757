// Decoding with a key/value cache (Transformer::decode, runtime/generate.h):
// each position's logits equal those of the evaluation forward over the
// window, for the model options and routers kv_cacheable() admits;
// generation gives the windowed steps' tokens and routing (drops over a
// binding capacity included) while the context fits the window, and past it
// rebuilds the cache from the last seq_len / 2 tokens; kv_cacheable()
// refuses what it must, and generation falls back.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/rng.h"
#include "ops/sparse_attention.h"
#include "runtime/generate.h"

namespace sy {
namespace {

// model: more fields of the model block.
Config config(const std::string& extra, const std::string& model = "") {
  Config c = parse_config("model { d_model: 32 n_heads: 4 n_layers: 2 ffn_hidden: 48 seq_len: 24 init_std: 0.3 " +
                              model + " } train { seed: 5 } " + extra,
                          "test");
  validate_config(c, "test");
  return c;
}

// The configs the cache serves: the GPT-2 layout; RoPE, RMSNorm, SwiGLU, no
// biases, tied embeddings, grouped key/value heads and a dropless top-2 MoE
// with a shared expert (Mixtral's); top-1 under a capacity that binds (2
// slots an expert for a window of 24 tokens over 4 experts), padded and with
// a floor (min_capacity 3); top-2 token by token under a capacity that binds
// (6 slots); sigmoid scores over experts of two widths, limited to one of
// two groups, with the per-sequence balance loss; hash routing; Sinkhorn's
// evaluation offsets (made nonzero by model_for); depth routing (the
// predictor keeps about half the tokens), with RoPE and a dropless MoE in
// the routed blocks, and with learned positions and sigmoid weights; a
// sliding window of 5 (ROUTED without routing heads) in the last block,
// with RoPE and grouped heads, and of 3 in every block under depth routing,
// with learned positions and with RoPE and grouped heads; routed attention
// (2 local heads with a window of 4 and 2 routing heads over 4 clusters,
// calibrated) with RoPE and grouped heads, under a cluster capacity that
// binds (6 of a window's 24 tokens), and in depth-routed blocks; block
// top-k (2 of up to 5 earlier blocks of 4) with RoPE and grouped heads, 1
// block of 5 (the window's last block partial), and 1 block of 3 in
// depth-routed blocks (blocks of the kept tokens), with learned positions
// and with RoPE and grouped heads.
std::vector<std::pair<std::string, Config>> cached_configs() {
  return {
      {"gpt2", config("")},
      {"mixtral", config("moe { num_experts: 4 top_k: 2 renormalize: true dropless: true every_n_layers: 1 "
                         "shared_expert: true }",
                         "position: ROPE norm: RMSNORM activation: SWIGLU bias: false tie_embeddings: true "
                         "n_kv_heads: 2")},
      {"switch", config("moe { num_experts: 4 top_k: 1 capacity_factor_eval: 0.3 every_n_layers: 2 }")},
      {"switch_padded", config("moe { num_experts: 4 top_k: 1 capacity_factor_eval: 0.3 min_capacity: 3 "
                               "padded: true every_n_layers: 1 }")},
      {"token_order", config("moe { num_experts: 4 top_k: 2 capacity_factor_eval: 0.5 slot_priority: TOKEN_ORDER "
                             "every_n_layers: 1 }")},
      {"grouped", config("moe { num_experts: 4 top_k: 2 score_function: SIGMOID renormalize: true "
                         "capacity_factor_eval: 0.75 slot_priority: TOKEN_ORDER expert_groups: 2 groups_per_token: 1 "
                         "expert_hidden: [32, 32, 64, 64] load_balance_tokens: 24 every_n_layers: 1 }")},
      {"hash", config("moe { num_experts: 4 router: HASH dropless: true load_balance_coef: 0 every_n_layers: 1 }")},
      {"sinkhorn", config("moe { num_experts: 4 dropless: true sinkhorn_iters: 3 sinkhorn_at_eval: true "
                          "every_n_layers: 1 }")},
      {"depth_rope", config("depth { every_n_layers: 2 capacity: 0.5 } moe { num_experts: 4 top_k: 2 dropless: true "
                            "every_n_layers: 1 }",
                            "position: ROPE")},
      {"depth", config("depth { every_n_layers: 1 capacity: 0.5 weight: SIGMOID }")},
      {"window", config("attention { kind: ROUTED last_n_layers: 1 num_routing_heads: 0 window: 5 }",
                        "position: ROPE n_kv_heads: 2")},
      {"window_depth", config("attention { kind: ROUTED last_n_layers: 2 num_routing_heads: 0 window: 3 } "
                              "depth { every_n_layers: 1 capacity: 0.5 }")},
      {"window_depth_rope", config("attention { kind: ROUTED last_n_layers: 2 num_routing_heads: 0 window: 3 } "
                                   "depth { every_n_layers: 1 capacity: 0.5 }",
                                   "position: ROPE n_kv_heads: 2")},
      {"routed", config("attention { kind: ROUTED last_n_layers: 1 num_routing_heads: 2 num_clusters: 4 window: 4 }",
                        "position: ROPE n_kv_heads: 2")},
      {"routed_capacity", config("attention { kind: ROUTED last_n_layers: 2 num_routing_heads: 2 num_clusters: 4 "
                                 "window: 4 dropless: false capacity_factor: 1 }")},
      {"routed_depth", config("attention { kind: ROUTED last_n_layers: 2 num_routing_heads: 2 num_clusters: 4 "
                              "window: 4 } depth { every_n_layers: 2 capacity: 0.5 }")},
      {"block_topk", config("attention { kind: BLOCK_TOPK last_n_layers: 2 block_size: 4 topk_blocks: 2 }",
                            "position: ROPE n_kv_heads: 2")},
      {"block_topk_partial", config("attention { kind: BLOCK_TOPK last_n_layers: 1 block_size: 5 topk_blocks: 1 }")},
      {"block_topk_depth", config("attention { kind: BLOCK_TOPK last_n_layers: 2 block_size: 3 topk_blocks: 1 } "
                                  "depth { every_n_layers: 1 capacity: 0.5 }")},
      {"block_topk_depth_rope", config("attention { kind: BLOCK_TOPK last_n_layers: 2 block_size: 3 topk_blocks: 1 } "
                                       "depth { every_n_layers: 1 capacity: 0.5 }",
                                       "position: ROPE n_kv_heads: 2")},
  };
}

std::vector<int32_t> random_ids(int64_t n, int64_t V, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < n; ++t) ids.push_back(static_cast<int32_t>(rng.below(V)));
  return ids;
}

// An evaluation-mode model of cfg; the selection biases (Sinkhorn's mean
// offsets, or the balancing bias) drawn nonzero, as training leaves them.
std::unique_ptr<Transformer> model_for(const Config& cfg) {
  auto model = std::make_unique<Transformer>(host_ctx(), cfg);
  if (model->needs_calibration()) {  // routed attention's centroids: k-means on a warm-up batch
    Batch b;
    b.inputs = random_ids(4 * cfg.model().seq_len(), cfg.model().vocab_size(), 21);
    b.targets.assign(b.inputs.size(), 0);
    model->calibrate(b);
  }
  Rng rng(8);
  for (auto& [name, bias] : model->balance_biases())
    for (int64_t g = 0; g < bias.numel(); ++g) bias.f32()[g] = static_cast<float>(rng.normal());
  model->set_training(false);
  return model;
}

// The evaluation forward's logits over one window of these ids.
std::vector<float> window_logits(Transformer& model, const std::vector<int32_t>& ids) {
  Batch b;
  b.inputs = ids;
  b.targets.assign(ids.size(), 0);
  model.forward(b);
  return model.logits().to_vector<float>();
}

double rel_l2(const float* got, const float* want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += d * d, den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

TEST(KvCache, EachPositionsLogitsAreTheWindowsRow) {
  for (const auto& [name, cfg] : cached_configs()) {
    SCOPED_TRACE(name);
    std::string why;
    ASSERT_TRUE(kv_cacheable(cfg, &why)) << why;
    const auto m = model_for(cfg);
    Transformer& model = *m;
    const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size();
    const std::vector<int32_t> ids = random_ids(T, V, 9);
    const std::vector<float> window = window_logits(model, ids);
    // "switch" (top-1, a capacity that binds): the decoded tokens' drops are
    // the window's, and count as capacity drops, as the window's do, not as
    // the budget's (through which decoding makes them).
    const bool drops = name == "switch";
    const double window_dropped = drops ? model.moe_layers().at(0).second->stats().dropped : 0;
    double decode_dropped = 0, decode_budget_dropped = 0;
    KvCache cache = model.new_cache();
    for (int64_t p = 0; p < T; ++p) {
      const Tensor got = model.decode(ids[p], p, cache);
      EXPECT_LE(rel_l2(got.f32(), window.data() + p * V, V), 1e-5) << "position " << p;
      if (drops) {
        const RoutingStats& st = model.moe_layers().at(0).second->stats();
        decode_dropped += st.dropped, decode_budget_dropped += st.budget_dropped;
      }
    }
    if (drops) {
      EXPECT_GT(window_dropped, 0.0);
      EXPECT_NEAR(decode_dropped / static_cast<double>(T), window_dropped, 1e-12);
      EXPECT_EQ(decode_budget_dropped, 0.0);
    }
    if (name.rfind("block_topk", 0) == 0) {
      // The cached block means: each complete block's, per key head, exactly
      // as block_key_mean makes it over the cache's rows.
      for (size_t l = 0; l < cache.k.size(); ++l) {
        const std::vector<float>& means = cache.attn[l].values;
        if (means.empty()) continue;  // (a dense block)
        const int64_t bs = cfg.attention().block_size(), W = cache.k[l].dim(1), D = 32 / 4;
        const int64_t G = W / D, nb = (T + bs - 1) / bs;
        ASSERT_EQ(static_cast<int64_t>(means.size()), G * nb * D);
        for (int64_t g = 0; g < G; ++g)
          for (int64_t b = 0; (b + 1) * bs <= cache.rows[l]; ++b) {
            std::vector<float> want(D);
            ops::block_key_mean(want.data(), cache.k[l].f32() + b * bs * W + g * D, bs, W, D);
            EXPECT_EQ(std::vector<float>(means.begin() + (g * nb + b) * D, means.begin() + (g * nb + b + 1) * D), want)
                << "block h" << l << ", key head " << g << ", block " << b;
          }
      }
    }
    if (name == "routed_capacity") {  // its routing heads' keys: some over a cluster's capacity, some sharing one
      const std::vector<int64_t>& s = cache.attn.back().counts;  // per routing head: each key's cluster (-1 dropped), ...
      const std::vector<int64_t> clusters(s.begin(), s.begin() + 2 * T);
      EXPECT_NE(std::find(clusters.begin(), clusters.end(), -1), clusters.end());
      const std::vector<int64_t> k_counts(s.begin() + 2 * T + 2 * 4, s.end());  // (after the query counts)
      EXPECT_GE(*std::max_element(k_counts.begin(), k_counts.end()), 2);
    }
  }
}

TEST(KvCache, GenerationGivesTheWindowedTokensAndRouting) {
  ops::SamplingParams sp;  // temperature 1: every token a draw
  for (const auto& [name, cfg] : cached_configs()) {
    SCOPED_TRACE(name);
    const auto m = model_for(cfg);
    Transformer& model = *m;
    const int64_t T = cfg.model().seq_len();
    const std::vector<int32_t> prompt = random_ids(5, cfg.model().vocab_size(), 4);
    for (uint64_t seed : {1, 2}) {
      GenerationRouting with, without;
      const auto cached = generate_ids(model, cfg, prompt, static_cast<int>(T - 5), sp, seed, &with, true);
      const auto windowed = generate_ids(model, cfg, prompt, static_cast<int>(T - 5), sp, seed, &without, false);
      EXPECT_EQ(cached, windowed) << "seed " << seed;
      ASSERT_EQ(with.moe.size(), without.moe.size());
      int64_t dropped = 0;
      for (size_t m = 0; m < with.moe.size(); ++m) {
        EXPECT_EQ(with.moe[m].load, without.moe[m].load) << "layer " << with.moe[m].layer;
        EXPECT_EQ(with.moe[m].tokens, without.moe[m].tokens);
        EXPECT_EQ(with.moe[m].dropped, without.moe[m].dropped);
        dropped += with.moe[m].dropped;
      }
      // The binding capacities drop (else the emulation would go untested).
      if (name == "switch" || name == "switch_padded" || name == "token_order" || name == "grouped")
        EXPECT_GT(dropped, 0);
      ASSERT_EQ(with.depth.size(), without.depth.size());
      for (size_t d = 0; d < with.depth.size(); ++d) {
        EXPECT_EQ(with.depth[d].kept, without.depth[d].kept) << "block " << with.depth[d].layer;
        EXPECT_EQ(with.depth[d].tokens, without.depth[d].tokens);
        // Some tokens kept and some skipped (else the cache's rows would go untested).
        EXPECT_GT(with.depth[d].kept, 0);
        EXPECT_LT(with.depth[d].kept, with.depth[d].tokens);
      }
    }
  }
}

// A stop id (data.eos_id) ends generation at its first draw: the ids are
// those without it up to and including that draw, cached or not; an id
// never drawn changes nothing.
TEST(KvCache, GenerationStopsAfterTheStopId) {
  ops::SamplingParams sp;
  const Config cfg = cached_configs().front().second;
  const auto m = model_for(cfg);
  Transformer& model = *m;
  const std::vector<int32_t> prompt = random_ids(5, cfg.model().vocab_size(), 4);
  const auto all = generate_ids(model, cfg, prompt, 30, sp, 3, nullptr, true);
  const int32_t stop = all[prompt.size() + 6];  // (the 7th drawn id)
  const auto first = std::find(all.begin() + prompt.size(), all.end(), stop);
  const std::vector<int32_t> want(all.begin(), first + 1);
  ASSERT_LT(want.size(), all.size());
  for (const bool cached : {true, false})
    EXPECT_EQ(generate_ids(model, cfg, prompt, 30, sp, 3, nullptr, cached, stop), want) << "cached " << cached;
  int32_t never = 0;
  while (std::find(all.begin() + prompt.size(), all.end(), never) != all.end()) ++never;
  EXPECT_EQ(generate_ids(model, cfg, prompt, 30, sp, 3, nullptr, true, never), all);
}

// Past the window the cache restarts from the context's last T / 2 tokens:
// the same as the windowed steps on the contexts that rule gives (each
// token drawn from the logits of the forward over text[start ..]; start
// the last T tokens of the prompt, then moved to size - T / 2 when the
// window is full), with a binding capacity's counts restarting too; and a
// prompt longer than the window.
TEST(KvCache, PastTheWindowTheCacheRestartsFromItsLastHalf) {
  ops::SamplingParams greedy;
  greedy.temperature = 0;
  for (const auto& [name, cfg] : cached_configs()) {  // (every config: each block's rows restart too)
    const auto m = model_for(cfg);
    Transformer& model = *m;
    const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size();
    for (const int64_t prompt_len : {int64_t{3}, T + 5}) {
      SCOPED_TRACE(name + ", prompt " + std::to_string(prompt_len));
      const std::vector<int32_t> prompt = random_ids(prompt_len, V, 6);
      const int n = static_cast<int>(2 * T + 7);  // through two restarts
      const std::vector<int32_t> got = generate_ids(model, cfg, prompt, n, greedy, 1, nullptr, true);
      std::vector<int32_t> want = prompt;
      int64_t start = std::max<int64_t>(0, prompt_len - T);
      for (int i = 0; i < n; ++i) {
        if (static_cast<int64_t>(want.size()) - start > T) start = static_cast<int64_t>(want.size()) - T / 2;
        const std::vector<int32_t> context(want.begin() + start, want.end());
        // The windowed step on exactly that context (it fits the window).
        want.push_back(generate_ids(model, cfg, context, 1, greedy, 1, nullptr, false).back());
      }
      EXPECT_EQ(got, want);
      if (prompt_len > T) continue;
      // Until the context first outgrows the window, the windowed steps' own tokens.
      const std::vector<int32_t> windowed = generate_ids(model, cfg, prompt, n, greedy, 1, nullptr, false);
      EXPECT_TRUE(std::equal(got.begin(), got.begin() + T + 1, windowed.begin()));
    }
  }
}

// The cache holds the decoding state: two caches decoded in turn give what
// each gives alone, and a windowed forward after decoding is as before it.
TEST(KvCache, TheCacheHoldsTheStateAndForwardIsUntouched) {
  for (const auto& [name, cfg] : cached_configs()) {
    // a binding capacity; windows under depth routing; routing heads under a binding capacity
    // and block top-k's key means
    if (name != "switch" && name != "window_depth_rope" && name != "routed_capacity" && name != "block_topk") continue;
    SCOPED_TRACE(name);
    const auto m = model_for(cfg);
    Transformer& model = *m;
    const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size();
    const std::vector<int32_t> w = random_ids(T, V, 12);
    const std::vector<float> before = window_logits(model, w);
    const std::vector<int32_t> x = random_ids(T, V, 13), y = random_ids(T, V, 14);
    KvCache alone = model.new_cache();
    std::vector<std::vector<float>> want;
    for (int64_t p = 0; p < T; ++p) want.push_back(model.decode(x[p], p, alone).to_vector<float>());
    KvCache cx = model.new_cache(), cy = model.new_cache();
    for (int64_t p = 0; p < T; ++p) {
      EXPECT_EQ(model.decode(x[p], p, cx).to_vector<float>(), want[p]) << "position " << p;
      model.decode(y[p], p, cy);
    }
    EXPECT_EQ(window_logits(model, w), before);
  }
}

TEST(KvCache, RefusesWhatCountsTheWindowAndFallsBack) {
  const std::vector<std::pair<std::string, std::string>> refused{
      {"precision: BF16", "precision BF16"},
      {"attention { kind: ROUTED last_n_layers: 1 num_routing_heads: 2 num_clusters: 4 window: 8 assignment: BALANCED }",
       "BALANCED"},
      {"moe { num_experts: 4 top_k: 1 dropless: true budget_mode: HARD_CAUSAL expert_cost: [1, 1, 2, 2] budget: 1.5 "
       "every_n_layers: 1 }",
       "HARD_CAUSAL"},
  };
  ops::SamplingParams sp;
  for (const auto& [extra, reason] : refused) {
    SCOPED_TRACE(extra);
    const Config cfg = config(extra);
    std::string why;
    EXPECT_FALSE(kv_cacheable(cfg, &why));
    EXPECT_NE(why.find(reason), std::string::npos) << why;
    Transformer model(host_ctx(), cfg);
    if (model.needs_calibration()) {
      Batch b;
      b.inputs = random_ids(cfg.model().seq_len(), cfg.model().vocab_size(), 2);
      b.targets.assign(b.inputs.size(), 0);
      model.calibrate(b);
    }
    model.set_training(false);
    const std::vector<int32_t> prompt = random_ids(4, cfg.model().vocab_size(), 3);
    EXPECT_EQ(generate_ids(model, cfg, prompt, 6, sp, 1, nullptr, true),
              generate_ids(model, cfg, prompt, 6, sp, 1, nullptr, false));
  }
  // Not causal at all: not cacheable either, with causal()'s reason.
  std::string why;
  EXPECT_FALSE(kv_cacheable(config("moe { num_experts: 4 router: EXPERT_CHOICE every_n_layers: 1 }"), &why));
  EXPECT_NE(why.find("EXPERT_CHOICE"), std::string::npos) << why;
}

}  // namespace
}  // namespace sy
