// Hash routing (ops/hash_routing.h): the keys name one expert a row, the
// same for the same id and seed and another mapping under another seed;
// ids spread evenly over the experts; and in a model (moe.router HASH)
// every token of a MoE layer goes to its id's expert under that layer's
// seed, with the router's probability as its weight. The CUDA kernel
// against this reference: backend_ops_test's hash_route_keys cases.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/rng.h"
#include "tests/config_error.h"
#include "ops/hash_routing.h"
#include "runtime/model.h"
#include "runtime/moe_layer.h"

namespace sy {
namespace {

std::vector<float> keys_for(const std::vector<int32_t>& ids, int64_t G, uint64_t seed) {
  Tensor k = Tensor::empty({static_cast<int64_t>(ids.size()), G}, DType::f32, host_ctx());
  ops::hash_route_keys(host_ctx(), k, Tensor::from_host(ids), seed);
  return k.to_vector<float>();
}

TEST(HashRouting, EachRowNamesItsIdsExpert) {
  const int64_t G = 8;
  const std::vector<int32_t> ids = {0, 5, 5, 255, 0, 2047, 17};
  const std::vector<float> k = keys_for(ids, G, 11);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t e = ops::hashed_expert(ids[i], 11, G);
    for (int64_t g = 0; g < G; ++g)
      EXPECT_EQ(k[i * G + g], g == e ? 0.f : -std::numeric_limits<float>::infinity()) << "row " << i << ", " << g;
  }
}

// Known answers from an independent SplitMix64 (Python, the published
// constants): seed 0, id 0 is its first output 0xE220A8397B1DCDAF, whose
// residue mod 8 is 7; the rest the same generator at other seeds, ids
// (up to 2^31 - 1) and expert counts.
TEST(HashRouting, KnownAnswers) {
  for (const int32_t id : {0, 1, 17, 2147483647}) {  // draw id + 1 of the project's Rng(seed)
    Rng rng(12345);
    rng.skip(static_cast<uint64_t>(id));
    EXPECT_EQ(ops::hashed_expert(id, 12345, 1000), static_cast<int64_t>(rng.next_u64() % 1000)) << id;
  }
  EXPECT_EQ(ops::hashed_expert(0, 0, 8), 7);
  EXPECT_EQ(ops::hashed_expert(5, 11, 8), 6);
  EXPECT_EQ(ops::hashed_expert(255, 11, 8), 5);
  EXPECT_EQ(ops::hashed_expert(65, 5 * 1000003ull, 4), 3);
  EXPECT_EQ(ops::hashed_expert(2147483647, 77, 61), 57);
  EXPECT_EQ(ops::hashed_expert(3, 12345, 1000), 450);
}

// 4096 ids over 8 experts: each expert within 4 standard deviations of 512
// (binomial, sd 21); another seed moves most ids (7/8 of them, expected).
TEST(HashRouting, IdsSpreadEvenlyAndTheSeedRemaps) {
  const int64_t G = 8, V = 4096;
  std::vector<int64_t> count(G, 0);
  int64_t moved = 0;
  for (int32_t id = 0; id < V; ++id) {
    ++count[ops::hashed_expert(id, 3, G)];
    moved += ops::hashed_expert(id, 3, G) != ops::hashed_expert(id, 4, G);
  }
  for (int64_t g = 0; g < G; ++g) EXPECT_NEAR(count[g], 512, 84) << "expert " << g;
  EXPECT_NEAR(moved, V * 7 / 8, 200);
}

// In a model: layer l's route sends every token to hashed_expert(id, seed
// of layer l = train.seed * 1000003 + l, runtime/model.cc), weight its
// probability; handed no ids, a MoE layer refuses.
TEST(HashRouting, AModelRoutesEveryTokenByItsId) {
  Config cfg = parse_config(R"(
    model { d_model: 16 n_layers: 2 n_heads: 2 ffn_hidden: 24 seq_len: 8 }
    moe { num_experts: 4 top_k: 1 every_n_layers: 1 router: HASH capacity_factor_eval: 4 load_balance_coef: 0 }
    train { seed: 5 }
  )", "test");
  validate_config(cfg, "test");
  Transformer model(host_ctx(), cfg);
  model.set_training(false);
  Rng rng(2);
  Batch batch;
  for (int i = 0; i < 32; ++i) {
    batch.inputs.push_back(static_cast<int32_t>(rng.below(256)));
    batch.targets.push_back(static_cast<int32_t>(rng.below(256)));
  }
  model.forward(batch);
  int layers = 0;
  for (const auto& [l, layer] : model.moe_layers()) {
    ++layers;
    const std::vector<int32_t> group = layer->route().group.to_vector<int32_t>();
    const std::vector<float> weight = layer->route().weight.to_vector<float>();
    for (size_t i = 0; i < batch.inputs.size(); ++i) {
      EXPECT_EQ(group[i], ops::hashed_expert(batch.inputs[i], 5 * 1000003ull + l, 4)) << "layer " << l << ", " << i;
      EXPECT_GT(weight[i], 0.f);
      EXPECT_LT(weight[i], 1.f);  // the router's probability (no renormalize)
    }
  }
  EXPECT_EQ(layers, 2);
  // A MoE layer handed no ids refuses to route.
  MoeLayer& layer = *model.moe_layers().front().second;
  layer.set_token_ids(Tensor());
  EXPECT_THROW(layer.forward(Tensor::zeros({4, 16}, DType::f32, host_ctx())), Error);
}

TEST(HashRouting, ConfigRefusals) {
  auto refuses = [](const std::string& text, const std::string& what) {
    const std::string e = testing::error_of([&] { validate_config(parse_config(text, "t"), "t"); });
    EXPECT_NE(e.find(what), std::string::npos) << text << ": " << e;
  };
  refuses("moe { num_experts: 4 router: HASH top_k: 2 }", "moe.top_k = 2: hash routing sends a token to one expert");
  refuses("moe { num_experts: 4 router: HASH load_balance_coef: 0.01 }",
          "moe.load_balance_coef = 0.01: the loss cannot move a hashed choice");
  const std::string hash = "moe { num_experts: 4 router: HASH load_balance_coef: 0 ";
  refuses(hash + "bias_balance_rate: 0.5 }", "moe.bias_balance_rate = 0.5: a bias cannot move a hashed choice");
  refuses(hash + "sinkhorn_iters: 3 }", "moe.sinkhorn_iters = 3: offsets cannot move a hashed choice");
  refuses(hash + "sinkhorn_at_eval: true }", "moe.sinkhorn_at_eval = true: offsets cannot move a hashed choice");
  refuses(hash + "budget_coef: 0.1 }", "moe.budget_coef = 0.1: the budget loss cannot move a hashed choice");
  refuses(hash + "router_noise: 1 router_noise_kind: GUMBEL }", "moe.router_noise_kind = GUMBEL: Gumbel draws");
  refuses(hash + "expert_groups: 2 groups_per_token: 1 }", "moe.expert_groups = 2: limits a learned router's choice");
  refuses(hash + "} depth { every_n_layers: 2 }", "depth.every_n_layers = 2: hands the experts gathered rows");
  refuses(hash + "} parallel { expert_parallel: 2 dedup_dispatch: true }",
          "parallel.dedup_dispatch = true: with moe.top_k = 1");
  validate_config(parse_config(hash + "}", "t"), "t");
}

}  // namespace
}  // namespace sy
