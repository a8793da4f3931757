// Config loading: defaults, overrides, and one clear error per kind of bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <sys/stat.h>
#include <unistd.h>

#include "comm/nccl_communicator.h"
#include "config_error.h"
#include "core/device.h"
#include "core/error.h"
#include "runtime/config.h"
#include "runtime/data.h"

namespace sy {
namespace {

using testing::error_of;

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
  // A file that ends inside a block: protobuf finds no token; the line says
  // what was found instead.
  expect_invalid("model {\n  d_model: 64\n", "t.pbtxt:3:1: Expected identifier, got: the end of the file (a '}' missing?)");
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
  expect_invalid("train { steps: 10 warmup_steps: 11 }",
                 "train.warmup_steps = 11: must be in [0, train.steps = 10] (a shorter run needs fewer: lower "
                 "train.warmup_steps with it, e.g. --set train.warmup_steps=0)");
  expect_invalid("moe { num_experts: 4 router_noise: -1 }", "moe.router_noise = -1: must be in [0, 10]");
  // In a depth-routed block the MoE layer routes ceil(0.5 x 128) = 64 rows
  // a sequence: groups of 128 would span two.
  expect_invalid("model { seq_len: 128 } moe { num_experts: 4 every_n_layers: 2 load_balance_tokens: 128 } "
                 "depth { every_n_layers: 2 capacity: 0.5 }",
                 "moe.load_balance_tokens = 128: must divide the 64 tokens a depth-routed block keeps of each sequence");
  parse_ok("model { seq_len: 128 } moe { num_experts: 4 every_n_layers: 2 load_balance_tokens: 32 } "
           "depth { every_n_layers: 2 capacity: 0.5 }");
  // (MoE layers outside the depth-routed blocks: no constraint from them.)
  parse_ok("model { n_layers: 4 seq_len: 128 } moe { num_experts: 4 every_n_layers: 2 load_balance_tokens: 128 } "
           "depth { every_n_layers: 3 capacity: 0.5 }");
  expect_invalid("attention { kind: ROUTED num_routing_heads: 1 assignment: BALANCED commitment_coef: 0.1 }",
                 "attention.commitment_coef = 0.1: applies to attention.assignment CAUSAL");
  parse_ok("attention { kind: ROUTED num_routing_heads: 1 commitment_coef: 0.1 }");
  expect_invalid("moe { num_experts: 4 load_balance_tokens: 100 }",
                 "moe.load_balance_tokens = 100: must divide train.batch / train.micro_batches * model.seq_len = ");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE router_noise_kind: GUMBEL }",
                 "moe.router_noise_kind = GUMBEL: Gumbel draws pick a token's expert; they apply to TOKENS_CHOOSE only");
  expect_invalid("moe { num_experts: 4 sinkhorn_iters: 1001 }", "moe.sinkhorn_iters = 1001: must be in [0, 1000]");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE sinkhorn_iters: 5 }",
                 "moe.sinkhorn_iters = 5: balances the tokens' choice; expert choice is balanced by construction");
  expect_invalid("moe { num_experts: 4 sinkhorn_iters: 5 bias_balance_rate: 0.01 }",
                 "moe.sinkhorn_iters = 5: Sinkhorn's offsets and moe.bias_balance_rate = 0.01 both offset the "
                 "selection to balance it: set one, the other 0");
  expect_invalid("moe { num_experts: 4 sinkhorn_at_eval: true }",
                 "moe.sinkhorn_at_eval = true: keeps a mean of the Sinkhorn offsets; set moe.sinkhorn_iters");
  expect_invalid("moe { num_experts: 4 sinkhorn_iters: 5 sinkhorn_eval_decay: 1 }",
                 "moe.sinkhorn_eval_decay = 1: must be in [0, 1)");
  expect_invalid("moe { num_experts: 4 top_k: 2 sinkhorn_iters: 5 expert_groups: 2 groups_per_token: 1 }",
                 "moe.sinkhorn_iters = 5: selects by logits plus offsets, where moe.expert_groups ranks groups");
}

TEST(Config, PaddedExpertsNeedAFixedCapacityAndOneExpertGroup) {
  expect_invalid("moe { num_experts: 4 padded: true dropless: true }",
                 "t.pbtxt: moe.padded = true: padding needs a capacity known before routing; not with moe.dropless");
  expect_invalid("moe { num_experts: 4 padded: true budget_mode: HARD }",
                 "moe.padded = true: a HARD or HARD_CAUSAL budget renumbers the rows; padded needs budget_mode SOFT");
  expect_invalid("moe { num_experts: 4 padded: true } parallel { expert_parallel: 2 }",
                 "moe.padded = true: the expert exchange sends counted rows; padded needs parallel.expert_parallel = 1");
  expect_invalid("moe { num_experts: 4 padded: true pad_to_largest: true }",
                 "moe.pad_to_largest = true: pads to this step's largest count; moe.padded pads to the capacity: set one");
  expect_invalid("moe { num_experts: 4 pad_to_largest: true } parallel { expert_parallel: 2 }",
                 "moe.pad_to_largest = true: the expert exchange sends counted rows; pad_to_largest needs "
                 "parallel.expert_parallel = 1");
}

// A field set (to other than its default) that only a choice left unmade
// would read is refused, naming that choice: a window without
// attention.kind trained dense attention. A choice made (in the file or by
// --set: a routed config's dense baseline keeps its routed fields) and a
// field at its default (as a checkpoint's config spells every default out)
// pass.
TEST(Config, FieldsNothingReadsAreRefused) {
  const std::string unset = " (unset: the default), which does not read it";
  expect_invalid("attention { window: 32 }", "attention.window = 32: set while attention.kind is DENSE" + unset);
  expect_invalid("model { n_layers: 2 } attention { last_n_layers: 1 }",
                 "attention.last_n_layers = 1: set while attention.kind is DENSE" + unset);
  expect_invalid("attention { block_size: 32 }", "attention.block_size = 32: set while attention.kind is DENSE" + unset);
  expect_invalid("attention { kind: ROUTED num_clusters: 4 }",
                 "attention.num_clusters = 4: set while attention.num_routing_heads is 0 (unset: every head local, no "
                 "clusters), which does not read it");
  expect_invalid("model { rope_base: 500000 }",
                 "model.rope_base = 500000: set while model.position is LEARNED" + unset);
  expect_invalid("depth { capacity: 0.25 }",
                 "depth.capacity = 0.25: set while depth.every_n_layers is 0 (unset: no depth-routed block), which "
                 "does not read it");
  expect_invalid("moe { num_experts: 4 router_noise_kind: GUMBEL }",
                 "moe.router_noise_kind = GUMBEL: draws no noise while moe.router_noise is 0 (unset)");
  // Choices made, and defaults spelled out: accepted.
  parse_ok("attention { kind: DENSE window: 32 num_routing_heads: 1 num_clusters: 8 block_size: 32 }");
  parse_ok("attention { kind: ROUTED num_routing_heads: 0 num_clusters: 4 }");
  parse_ok("model { position: LEARNED rope_base: 500000 } depth { every_n_layers: 0 capacity: 0.25 }");
  parse_ok("attention { window: 64 num_clusters: 0 block_size: 16 } model { rope_base: 10000 } "
           "depth { capacity: 0.5 tau: 0.5 }");
  parse_ok("moe { num_experts: 4 router_noise: 0 router_noise_kind: GUMBEL }");
}

TEST(Config, TokenFilesAllowLargerVocabularies) {
  const std::string tok = "data { source: TOKEN_FILES token_files: \"t/train_*.bin\" val_token_files: \"t/val_*.bin\" } ";
  // The patterns are not expanded at load: the data may not exist yet.
  EXPECT_EQ(parse_ok(tok + "model { vocab_size: 2048 }").model().vocab_size(), 2048);
  EXPECT_EQ(parse_ok(tok + "model { vocab_size: 1048576 }").model().vocab_size(), 1048576);
  expect_invalid(tok + "model { vocab_size: 1048577 }", "model.vocab_size = 1048577: must be in [2, 1048576]");
  expect_invalid(tok + "model { vocab_size: 1 }", "model.vocab_size = 1: must be in [2, 1048576]");
  expect_invalid("model { vocab_size: 2048 }",
                 "model.vocab_size = 2048: must be 256 for byte-level data (data.source TOKEN_FILES allows [2, 1048576])");
  expect_invalid("data { source: TOKEN_FILES val_token_files: \"v\" }",
                 "data.token_files = \"\": required when data.source is TOKEN_FILES");
  expect_invalid("data { source: TOKEN_FILES token_files: \"t\" }",
                 "data.val_token_files = \"\": required when data.source is TOKEN_FILES");
  expect_invalid(tok.substr(0, tok.size() - 2) + " path: \"x.txt\" }",
                 "data.path = x.txt: set while data.source is TOKEN_FILES, which reads data.token_files instead");
  expect_invalid("data { token_files: \"t\" }", "data.token_files = \"t\": set while data.source is SYNTHETIC");
  expect_invalid("data { tokenizer: \"m.model\" }", "data.tokenizer = \"m.model\": set while data.source is SYNTHETIC");
  // data.bos_id: a token id of the vocabulary, with token shards only.
  const std::string bos = tok.substr(0, tok.size() - 2) + " bos_id: ";
  EXPECT_EQ(parse_ok(bos + "1 } model { vocab_size: 2048 }").data().bos_id(), 1);
  EXPECT_EQ(parse_ok(bos + "2047 } model { vocab_size: 2048 }").data().bos_id(), 2047);
  expect_invalid(bos + "2048 } model { vocab_size: 2048 }", "data.bos_id = 2048: must be in [-1, 2047]");
  expect_invalid(bos + "-2 } model { vocab_size: 2048 }", "data.bos_id = -2: must be in [-1, 2047]");
  expect_invalid("data { bos_id: 1 }", "data.bos_id = 1: set while data.source is SYNTHETIC, which does not read it "
                                       "(byte-level data has no such token)");
  const std::string eos = tok.substr(0, tok.size() - 2) + " eos_id: ";
  EXPECT_EQ(parse_ok(eos + "2 } model { vocab_size: 2048 }").data().eos_id(), 2);
  expect_invalid(eos + "2048 } model { vocab_size: 2048 }", "data.eos_id = 2048: must be in [-1, 2047]");
  expect_invalid("data { eos_id: 2 }", "data.eos_id = 2: set while data.source is SYNTHETIC, which does not read it "
                                       "(byte-level data has no such token)");
}

TEST(Config, BackendCudaOnlyWhereBuilt) {
#ifdef SY_WITH_CUDA
  EXPECT_EQ(parse_ok("backend: CUDA").backend(), switchyard::Config::CUDA);
#else
  expect_invalid("backend: CUDA", "t.pbtxt: backend = CUDA: this build has no CUDA backend");
#endif
  EXPECT_EQ(parse_ok("backend: CPU").backend(), switchyard::Config::CPU);
}

// moe.first_dense_layers keeps the first blocks dense, and must leave a MoE
// layer: with every_n_layers 2 over 5 layers the MoE layers are 1 and 3.
TEST(Config, FirstDenseLayersLeaveAMoeLayer) {
  const std::string base = "model { n_layers: 5 } moe { num_experts: 4 every_n_layers: 2 ";
  const Config c = parse_ok(base + "first_dense_layers: 2 }");
  std::vector<int> moe;
  for (int l = 0; l < 5; ++l)
    if (is_moe_layer(c.moe(), l)) moe.push_back(l);
  EXPECT_EQ(moe, (std::vector<int>{3}));
  expect_invalid(base + "first_dense_layers: 4 }",
                 "t.pbtxt: moe.first_dense_layers = 4: leaves no MoE layer among the 5 with moe.every_n_layers = 2");
  expect_invalid(base + "first_dense_layers: 5 }", "t.pbtxt: moe.first_dense_layers = 5: must be in [0, 4]");
  EXPECT_FALSE(is_moe_layer(parse_ok("").moe(), 1));  // no experts
}

TEST(Config, MinCapacityIsACount) {
  EXPECT_EQ(parse_ok("moe { num_experts: 4 min_capacity: 4 }").moe().min_capacity(), 4);
  expect_invalid("moe { num_experts: 4 min_capacity: -1 }", "t.pbtxt: moe.min_capacity = -1: must be in [0, 1048576]");
  expect_invalid("moe { num_experts: 4096 min_capacity: 1048576 }",
                 "t.pbtxt: moe.min_capacity = 1048576: times moe.num_experts = 4096 rows must stay under 2^31");
}

// Group-limited routing: groups of consecutive experts dividing them, a
// token's top_k within its groups' experts, tokens choose only.
TEST(Config, ExpertGroupsDivideTheExpertsAndHoldTopK) {
  const std::string moe = "moe { num_experts: 8 top_k: 2 ";
  const Config c = parse_ok(moe + "expert_groups: 4 groups_per_token: 2 group_score_experts: 1 }");
  EXPECT_EQ(c.moe().expert_groups(), 4);
  parse_ok(moe + "expert_groups: 4 groups_per_token: 1 }");  // two experts of one group
  expect_invalid(moe + "expert_groups: 3 groups_per_token: 1 }",
                 "t.pbtxt: moe.expert_groups = 3: must divide moe.num_experts = 8");
  expect_invalid(moe + "expert_groups: 9 groups_per_token: 1 }", "t.pbtxt: moe.expert_groups = 9: must be in [0, 8]");
  expect_invalid(moe + "expert_groups: 4 }", "t.pbtxt: moe.groups_per_token = 0: must be in [1, 4]");
  expect_invalid("moe { num_experts: 8 top_k: 3 expert_groups: 4 groups_per_token: 1 }",
                 "t.pbtxt: moe.groups_per_token = 1: times 2 experts per group leaves fewer than moe.top_k = 3");
  expect_invalid(moe + "expert_groups: 4 groups_per_token: 2 group_score_experts: 3 }",
                 "t.pbtxt: moe.group_score_experts = 3: must be in [0, 2]");
  expect_invalid(moe + "groups_per_token: 2 }",
                 "t.pbtxt: moe.groups_per_token = 2: set while moe.expert_groups is 0 (no group limit)");
  expect_invalid(moe + "group_score_experts: 1 }",
                 "t.pbtxt: moe.group_score_experts = 1: set while moe.expert_groups is 0 (no group limit)");
  expect_invalid("moe { num_experts: 8 router: EXPERT_CHOICE expert_groups: 4 groups_per_token: 2 }",
                 "t.pbtxt: moe.expert_groups = 4: limits a token's choice; it applies to TOKENS_CHOOSE only");
}

TEST(Config, DedupDispatchNeedsTwoRowsAToken) {
  EXPECT_TRUE(parse_ok("moe { num_experts: 4 top_k: 2 } parallel { expert_parallel: 2 dedup_dispatch: true }")
                  .parallel()
                  .dedup_dispatch());
  parse_ok("moe { num_experts: 4 top_k: 2 } parallel { dedup_dispatch: true }");  // one rank: no effect
  expect_invalid("moe { num_experts: 4 top_k: 1 } parallel { expert_parallel: 2 dedup_dispatch: true }",
                 "t.pbtxt: parallel.dedup_dispatch = true: with moe.top_k = 1 a token has one row to send anyway");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE top_k: 2 }",
                 "moe.top_k = 2: expert choice has no count per token (each expert takes C = "
                 "ceil(moe.capacity_factor * tokens / moe.num_experts) tokens");
  parse_ok("moe { num_experts: 4 router: EXPERT_CHOICE capacity_factor: 2 }");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE renormalize: true }",
                 "moe.renormalize = true: renormalizes a token's k weights; expert choice has no k a token");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE capacity_factor_eval: 4 }",
                 "moe.capacity_factor_eval = 4: expert choice evaluates at moe.capacity_factor");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE bias_balance_rate: 0.001 }",
                 "moe.bias_balance_rate = 0.001: an expert's bias adds the same to every token's score for it");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE budget_coef: 0.1 }",
                 "t.pbtxt: moe.budget_coef = 0.1: expert choice fills every expert to capacity, so its cost is set by "
                 "moe.capacity_factor");
  parse_ok("moe { num_experts: 4 router: EXPERT_CHOICE budget_mode: HARD budget: 0.8 }");
  // A soft budget below what top_k choices of the cheapest expert cost.
  expect_invalid("moe { num_experts: 4 top_k: 2 budget: 1.5 budget_coef: 0.1 }",
                 "t.pbtxt: moe.budget = 1.5: below the least a token's moe.top_k = 2 choices can cost (2 of the dense "
                 "FFN, its k cheapest experts): under moe.budget_mode SOFT no routing meets it");
  // (Two distinct experts: 0.25 + 1, not twice the cheapest.)
  expect_invalid("model { ffn_hidden: 256 } moe { num_experts: 4 top_k: 2 budget: 1 budget_coef: 0.1 expert_hidden: "
                 "[64, 256, 256, 256] }",
                 "t.pbtxt: moe.budget = 1: below the least a token's moe.top_k = 2 choices can cost (1.25 of the dense");
  parse_ok("moe { num_experts: 4 top_k: 2 budget: 1.5 budget_mode: HARD }");
  parse_ok("moe { num_experts: 4 top_k: 2 budget: 1.5 budget_coef: 0.1 expert_hidden: [64, 64, 1024, 1024] }");
  expect_invalid("model { ffn_hidden: 256 } moe { num_experts: 4 every_n_layers: 1 budget_coef: 0.1 } "
                 "budget { target: 0.5 }",
                 "t.pbtxt: budget.target = 0.5: gives the MoE layers moe.budget ");
  expect_invalid("moe { num_experts: 4 budget_coef: 0.1 expert_cost: [1, 1, 2, 2] } budget { target: 0.9 }",
                 "t.pbtxt: budget.target = 0.9: plans the experts' share in FLOPs, and moe.expert_cost replaces");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE slot_priority: RANDOM }",
                 "t.pbtxt: moe.slot_priority = RANDOM: orders a tokens-choose router's slots");
  expect_invalid("moe { num_experts: 4 router: EXPERT_CHOICE slot_priority: TOKEN_ORDER }",
                 "t.pbtxt: moe.slot_priority = TOKEN_ORDER: orders a tokens-choose router's slots");
  parse_ok("moe { num_experts: 4 top_k: 2 slot_priority: TOKEN_ORDER }");
  parse_ok("train { recompute: true recompute_blocks: 2 }");
  expect_invalid("train { recompute_blocks: 1 }",
                 "t.pbtxt: train.recompute_blocks = 1: chooses the blocks train.recompute recomputes; set train.recompute");
  expect_invalid("train { recompute: true recompute_blocks: 3 }", "t.pbtxt: train.recompute_blocks = 3: must be in [0, 2]");
}

// Grouped-query attention: key/value heads dividing the query heads, with
// every attention kind.
TEST(Config, KvHeadsDivideTheHeads) {
  EXPECT_EQ(parse_ok("model { n_heads: 4 n_kv_heads: 2 }").model().n_kv_heads(), 2);
  parse_ok("model { n_heads: 4 n_kv_heads: 4 }");
  expect_invalid("model { n_heads: 4 n_kv_heads: 3 }", "t.pbtxt: model.n_kv_heads = 3: must divide model.n_heads = 4");
  expect_invalid("model { n_heads: 4 n_kv_heads: 8 }", "t.pbtxt: model.n_kv_heads = 8:");
  parse_ok("model { n_heads: 4 n_kv_heads: 2 } attention { kind: BLOCK_TOPK }");
  parse_ok("model { n_heads: 4 n_kv_heads: 1 } attention { kind: ROUTED num_routing_heads: 1 }");
  parse_ok("model { n_heads: 4 n_kv_heads: 4 } attention { kind: BLOCK_TOPK }");
}

// Dense attention on CUDA has the tiled kernels' head sizes only: another
// is refused at load (not at the first step's attention call), where a
// block attends densely; routed heads and block top-k take any size.
TEST(Config, CudaDenseAttentionHeadSizes) {
#ifdef SY_WITH_CUDA
  const std::string d48 = "backend: CUDA model { d_model: 96 n_heads: 2 } ";
  const std::string msg =
      "t.pbtxt: model.n_heads = 2: gives a head size d_model / n_heads = 48; dense attention on CUDA has head sizes "
      "16, 32, 64 and 128";
  expect_invalid(d48, msg);
  expect_invalid(d48 + "attention { kind: ROUTED num_routing_heads: 1 }", msg);  // a local head
  expect_invalid("backend: CUDA model { d_model: 96 n_heads: 2 n_layers: 2 } attention { kind: BLOCK_TOPK "
                 "last_n_layers: 1 }",
                 msg);
  parse_ok(d48 + "attention { kind: ROUTED num_routing_heads: 2 }");
  parse_ok(d48 + "attention { kind: BLOCK_TOPK }");
  // Routed and block top-k heads past 512 (a warp a row holds 16 values a lane at most).
  parse_ok("backend: CUDA model { d_model: 1024 n_heads: 2 } attention { kind: BLOCK_TOPK }");
  expect_invalid("backend: CUDA model { d_model: 1040 n_heads: 2 } attention { kind: BLOCK_TOPK }",
                 "t.pbtxt: model.n_heads = 2: gives a head size d_model / n_heads = 520; BLOCK_TOPK attention on CUDA "
                 "has head sizes up to 512");
  expect_invalid("backend: CUDA model { d_model: 1040 n_heads: 2 } attention { kind: ROUTED num_routing_heads: 2 }",
                 "ROUTED attention on CUDA has head sizes up to 512");
  for (const char* ok : {"32 n_heads: 2", "128 n_heads: 8", "256 n_heads: 2", "512 n_heads: 4"})
    parse_ok(std::string("backend: CUDA model { d_model: ") + ok + " }");
#endif
  parse_ok("backend: CPU model { d_model: 96 n_heads: 2 }");
}

TEST(Config, PrecisionFp32OrBf16) {
  EXPECT_EQ(parse_ok("").precision(), switchyard::Config::FP32);
  EXPECT_EQ(parse_ok("precision: BF16").precision(), switchyard::Config::BF16);
  expect_invalid("precision: FP16", "Unknown enumeration value of \"FP16\" for field \"precision\"");
  Config c;
  EXPECT_NE(error_of([&] { apply_override(c, "precision=FP8"); })
                .find("--set precision=FP8: 'FP8' is not a valid enum for precision (allowed: FP32, BF16)"),
            std::string::npos);
  apply_override(c, "precision=BF16");
  EXPECT_EQ(c.precision(), switchyard::Config::BF16);
}

TEST(Config, NcclNeedsTheCudaBackendAndNccl) {
  if (comm::nccl_available()) {
    expect_invalid("parallel { backend: NCCL }", "t.pbtxt: parallel.backend = NCCL: needs backend: CUDA");
    EXPECT_EQ(parse_ok("backend: CUDA parallel { backend: NCCL }").parallel().backend(),
              switchyard::ParallelConfig::NCCL);
  } else {
    expect_invalid("parallel { backend: NCCL }", "t.pbtxt: parallel.backend = NCCL: not in this build");
  }
  EXPECT_EQ(parse_ok("parallel { backend: MPI }").parallel().backend(), switchyard::ParallelConfig::MPI);
}

// The model options have CUDA kernels (rmsnorm, rope, swiglu, the transposed
// matmul, embedding without a position table, expert FFNs with SwiGLU and
// without biases): backend CUDA takes them in a CUDA build, and a build
// without CUDA refuses the backend itself, not the options.
TEST(Config, ModelOptionsAcceptedOnCuda) {
  const std::string all =
      "backend: CUDA model { position: ROPE norm: RMSNORM activation: SWIGLU bias: false tie_embeddings: true } "
      "moe { num_experts: 4 }";
#ifdef SY_WITH_CUDA
  EXPECT_EQ(parse_ok(all).backend(), switchyard::Config::CUDA);
  EXPECT_EQ(parse_ok("backend: CUDA model { position: ROPE }").model().position(), switchyard::ModelConfig::ROPE);
#else
  expect_invalid(all, "t.pbtxt: backend = CUDA: this build has no CUDA backend");
#endif
  parse_ok("backend: CPU model { position: ROPE norm: RMSNORM activation: SWIGLU bias: false tie_embeddings: true }");
}

TEST(Config, InconsistentSizes) {
  expect_invalid("model { d_model: 64 n_heads: 5 }",
                 "model.d_model = 64: must be divisible by model.n_heads = 5");
}

TEST(Config, ModelOptions) {
  const Config d = parse_ok("");
  EXPECT_EQ(d.model().position(), switchyard::ModelConfig::LEARNED);
  EXPECT_EQ(d.model().norm(), switchyard::ModelConfig::LAYERNORM);
  EXPECT_EQ(d.model().activation(), switchyard::ModelConfig::GELU);
  EXPECT_TRUE(d.model().bias());
  EXPECT_FALSE(d.model().tie_embeddings());
  EXPECT_FLOAT_EQ(d.model().rope_base(), 10000.f);
  const Config m = parse_ok(
      "model { position: ROPE rope_base: 500000 norm: RMSNORM activation: SWIGLU bias: false tie_embeddings: true }");
  EXPECT_EQ(m.model().position(), switchyard::ModelConfig::ROPE);
  EXPECT_FLOAT_EQ(m.model().rope_base(), 500000.f);
  // Bad values, each refused with one line naming the field.
  expect_invalid("model { position: ALIBI }", "t.pbtxt:1:");
  expect_invalid("model { position: ALIBI }", "field 'model': Unknown enumeration value of \"ALIBI\" for field \"position\"");
  expect_invalid("model { norm: BATCHNORM }", "\"BATCHNORM\" for field \"norm\"");
  expect_invalid("model { activation: RELU }", "\"RELU\" for field \"activation\"");
  expect_invalid("model { bias: maybe }", "field 'model'");
  expect_invalid("model { tie_embeddings: 2 }", "field 'model'");
  expect_invalid("model { rope_base: 1 }", "t.pbtxt: model.rope_base = 1: must be in (1, 1e+09]");
  expect_invalid("model { rope_base: -5 }", "model.rope_base = -5: must be in (1, 1e+09]");
  expect_invalid("model { rope_base: inf }", "model.rope_base = inf: must be a finite number");
  expect_invalid("model { position: ROPE d_model: 60 n_heads: 4 }",
                 "t.pbtxt: model.position = ROPE: needs an even head size; d_model / n_heads = 15");
  parse_ok("model { position: LEARNED d_model: 60 n_heads: 4 }");  // learned positions do not care
  Config c;
  EXPECT_NE(error_of([&] { apply_override(c, "model.position=SINUSOID"); })
                .find("--set model.position=SINUSOID: 'SINUSOID' is not a valid enum for model.position (allowed: LEARNED, ROPE)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "model.norm=2"); }).find("(allowed: LAYERNORM, RMSNORM)"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "model.bias=yes"); }).find("'yes' is not a valid bool for model.bias (allowed: true, false)"),
            std::string::npos);
  apply_override(c, "model.activation=SWIGLU");
  EXPECT_EQ(c.model().activation(), switchyard::ModelConfig::SWIGLU);
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
  EXPECT_NE(error_of([&] { apply_override(c, "moe.expert_cost=1,x"); })
                .find("--set moe.expert_cost=1,x: 'x' (element 1) is not a valid float for moe.expert_cost"),
            std::string::npos);
}

// Protobuf's text format reads 064 as octal (52) and 0x40 as hex: refused,
// in --set values, list elements and config files, where plain 0, decimals,
// floats like 0.5 and digits inside strings pass.
TEST(Config, IntegersWithALeadingZeroAreRefused) {
  Config c;
  EXPECT_NE(error_of([&] { apply_override(c, "model.d_model=064"); })
                .find("--set model.d_model=064: model.d_model: '064': protobuf's text format reads an integer with a "
                      "leading 0 as octal"),
            std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "model.d_model=0x40"); }).find("'0x40'"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "train.lr=01"); }).find("'01'"), std::string::npos);
  EXPECT_NE(error_of([&] { apply_override(c, "moe.router=01"); }).find("'01'"), std::string::npos);  // (an enum's number)
  EXPECT_NE(error_of([&] { apply_override(c, "moe.expert_hidden=64,064"); }).find("element 1 of moe.expert_hidden: '064'"),
            std::string::npos);
  expect_invalid("model {\n  d_model: 064\n}\n", "t.pbtxt:2: field 'd_model': '064': protobuf's text format");
  expect_invalid("moe { num_experts: 4 expert_hidden: [64, 064] }", "t.pbtxt:1: field 'moe': '064'");
  apply_override(c, "model.d_model=0");
  apply_override(c, "train.lr=0.5");
  apply_override(c, "data.path=data/064.txt");
  EXPECT_EQ(c.model().d_model(), 0);
  Config ok = parse_config("data { path: \"x/0644\" }  # 0777 in a comment\nmodel { d_model: 64 }", "t.pbtxt");
  EXPECT_EQ(ok.model().d_model(), 64);
}

TEST(Config, SetReplacesRepeatedFields) {
  Config c = parse_config("moe { num_experts: 4 expert_cost: [9, 9] }", "t.pbtxt");
  apply_override(c, "moe.expert_cost=1,1,4,4");
  ASSERT_EQ(c.moe().expert_cost_size(), 4);
  EXPECT_EQ(c.moe().expert_cost(0), 1.f);
  EXPECT_EQ(c.moe().expert_cost(3), 4.f);
  validate_config(c, "t.pbtxt");
  apply_override(c, "moe.expert_cost=[0.5, 2, 3, 4]");
  ASSERT_EQ(c.moe().expert_cost_size(), 4);
  EXPECT_EQ(c.moe().expert_cost(0), 0.5f);
  apply_override(c, "moe.expert_cost=");
  EXPECT_EQ(c.moe().expert_cost_size(), 0);
}

TEST(Config, EveryFloatMustBeFinite) {
  expect_invalid("moe { num_experts: 2 expert_cost: [1, inf] }", "t.pbtxt: moe.expert_cost[1] = inf: must be a finite number");
  expect_invalid("moe { num_experts: 2 expert_cost: [nan, 1] }", "moe.expert_cost[0] = nan: must be a finite number");
  expect_invalid("train { lr: nan }", "train.lr = nan: must be a finite number");
  expect_invalid("moe { budget: -inf }", "moe.budget = -inf: must be a finite number");
  expect_invalid("parallel { timeout_s: inf }", "parallel.timeout_s = inf: must be a finite number");
}

TEST(Config, DataPathNeedsTextFileSource) {
  expect_invalid("data { path: \"/etc/hostname\" }",
                 "data.path = /etc/hostname: set while data.source is SYNTHETIC, which does not read it");
}

// A refusal names the overrides only where they take part: the file's own
// fault, the same with or without them, names the file alone.
TEST(Config, OverridesAreNamedOnlyWhereTheyTakePart) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("sy_cfgo_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string bad = (dir / "bad.pbtxt").string(), good = (dir / "good.pbtxt").string();
  std::ofstream(bad) << "model { d_model: 64 n_heads: 5 }\n";
  std::ofstream(good) << "model { d_model: 64 }\n";
  std::string m = error_of([&] { load_config(bad, {"train.lr=0.01"}); });
  EXPECT_EQ(m.rfind(bad + ": model.d_model = 64: must be divisible by model.n_heads = 5", 0), 0u) << m;
  m = error_of([&] { load_config(good, {"model.n_heads=5"}); });
  EXPECT_EQ(m.rfind(good + " (with --set overrides): model.d_model = 64", 0), 0u) << m;
  // The file's fault fixed by an override, another made by one: the overrides'.
  m = error_of([&] { load_config(bad, {"model.n_heads=4", "train.lr=5"}); });
  EXPECT_EQ(m.rfind(bad + " (with --set overrides): train.lr = 5", 0), 0u) << m;
  std::filesystem::remove_all(dir);
}

TEST(Config, NonRegularFilesAreNamed) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("sy_cfg_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string fifo = (dir / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_of([&] { load_config(dir.string()); }).find(dir.string() + ": is a directory, not a config file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_config(fifo); }).find(fifo + ": is a FIFO (named pipe), not a config file"),
            std::string::npos);
  expect_invalid("data { source: TEXT_FILE path: \"" + dir.string() + "\" }",
                 "data.path = " + dir.string() + ": is a directory; data must be a regular file");
  expect_invalid("data { source: TEXT_FILE path: \"" + fifo + "\" }",
                 "data.path = " + fifo + ": is a FIFO (named pipe); data must be a regular file");
  std::filesystem::remove_all(dir);
}

// /proc/self/mem is a regular file by its type whose read at offset 0
// fails (EIO): an ifstream took the error for the end of the file, and the
// config read as empty (every default, no error).
TEST(Config, AReadErrorIsNamedNotTakenForAnEmptyFile) {
  if (!std::filesystem::exists("/proc/self/mem")) GTEST_SKIP() << "no /proc/self/mem here";
  const std::string m = error_of([&] { load_config("/proc/self/mem"); });
  EXPECT_NE(m.find("/proc/self/mem: cannot read config file: "), std::string::npos) << m;
  const std::string d = error_of([&] { read_file_bytes("/proc/self/mem"); });
  EXPECT_NE(d.find("/proc/self/mem: cannot read data file: "), std::string::npos) << d;
  EXPECT_NE(error_of([&] { load_config("/nonexistent/x.pbtxt"); })
                .find("/nonexistent/x.pbtxt: cannot open config file: No such file or directory"),
            std::string::npos);
}

TEST(Config, BinaryConfigIsEscapedWithTheParsersReason) {
  const std::string text("\x00\x01" "binary\x00stuff\n", 16);
  const std::string m = error_of([&] { parse_config(text, "b.pbtxt"); });
  EXPECT_NE(m.find("b.pbtxt:1:1: field '\\x00\\x01binary\\x00stuff': Invalid control characters"), std::string::npos) << m;
  for (unsigned char ch : m) EXPECT_TRUE(ch >= 0x20 && ch < 0x7f) << "raw byte " << int(ch) << " in: " << m;
  const std::string elf = "\x7f" "ELF\x02\x01\x01" + std::string(200, '\xff');
  const std::string e = error_of([&] { parse_config(elf, "elf.pbtxt"); });
  for (unsigned char ch : e) EXPECT_TRUE(ch >= 0x20 && ch < 0x7f) << "raw byte " << int(ch) << " in: " << e;
  EXPECT_LT(e.size(), 600u) << e;
}

TEST(Config, MemoryEstimateRefusesWhatCannotFit) {
  Config c = parse_ok("model { seq_len: 65536 } train { batch: 16 }");
  const MemoryEstimate est = estimate_memory(c, 1);
  EXPECT_GT(est.activations, 0);
  EXPECT_GT(est.parameters, 16.0 * 65536 * 64);  // the position table alone
  // Attention keeps no T x T matrix (ops/attention.h): activations grow with
  // T, not T^2 (a dense attention layer's probabilities at this shape would be
  // 4 x 16 x 4 heads x 65536^2 bytes, 1 TiB).
  Config half = parse_ok("model { seq_len: 32768 } train { batch: 16 }");
  EXPECT_DOUBLE_EQ(2 * estimate_memory(half, 1).activations, est.activations);
  EXPECT_LT(est.total(), 64.0 * (1ull << 30));
  MemoryPool host;
  host.bytes = est.total() / 2;
  const std::string m = error_of([&] { check_memory(c, 1, host, "t.pbtxt"); });
  EXPECT_NE(m.find("t.pbtxt: model.seq_len = 65536 with train.batch = 16: training needs about "), std::string::npos) << m;
  EXPECT_NE(m.find("but this machine has "), std::string::npos) << m;
  EXPECT_NE(m.find(" of physical memory; lower model.seq_len"), std::string::npos) << m;
  EXPECT_NE(m.find("(or set train.recompute)"), std::string::npos) << m;
  EXPECT_EQ(m.find("the parameters are most of it"), std::string::npos) << m;  // activations are
  // Where the parameters alone do not fit, no batch would: the advice is the
  // model's size and the ranks to split it over, not the batch's.
  {
    Config big = parse_ok("model { d_model: 512 n_layers: 4 ffn_hidden: 2048 } moe { num_experts: 64 top_k: 2 }");
    const MemoryEstimate b = estimate_memory(big, 1);
    EXPECT_GT(b.parameters, b.activations);
    MemoryPool small;
    small.bytes = b.parameters / 2;
    std::string e = error_of([&] { check_memory(big, 1, small, "t.pbtxt"); });
    EXPECT_NE(e.find("t.pbtxt: the parameters with gradients and AdamW state alone need about "), std::string::npos) << e;
    EXPECT_NE(e.find("needs a smaller model (model.d_model, model.n_layers, the FFN and expert widths, "
                     "moe.num_experts), or more ranks (mpirun -np N) to split the experts (parallel.expert_parallel) "
                     "or the AdamW state (parallel.shard_optimizer) over"),
              std::string::npos)
        << e;
    e = error_of([&] { check_memory(big, 2, small, "t.pbtxt"); });
    EXPECT_NE(e.find("or the experts (parallel.expert_parallel) or the AdamW state (parallel.shard_optimizer) split "
                     "over the ranks"),
              std::string::npos)
        << e;
    EXPECT_EQ(e.find("train.batch"), std::string::npos) << e;
    // Both fit apart but not together, the parameters the larger part: both pieces of advice.
    small.bytes = (b.parameters + b.activations) * 0.99;
    e = error_of([&] { check_memory(big, 1, small, "t.pbtxt"); });
    EXPECT_NE(e.find("lower model.seq_len or train.batch"), std::string::npos) << e;
    EXPECT_NE(e.find("; the parameters are most of it: a smaller model"), std::string::npos) << e;
  }
  // Recomputation keeps every block's input (N C) and one block's own
  // activations ((6 C + H + 2 F) N for a dense block) where all L blocks'
  // were kept: 4 bytes x ((L - 1) (6 C + H + 2 F) - L C) N fewer.
  Config rc = c;
  rc.mutable_train()->set_recompute(true);
  const double N = 16.0 * 65536, C = 64, H = 4, F = 256, L = 2;  // the defaults
  EXPECT_DOUBLE_EQ(est.activations - estimate_memory(rc, 1).activations,
                   4 * ((L - 1) * (6 * C + H + 2 * F) - L * C) * N);
  // Only block 0 of 2 (recompute_blocks 1): block 1's activations and block
  // 0's input to the end of the forward, block 0's own after block 1
  // dropped its: one block's activations fewer, one input more.
  rc.mutable_train()->set_recompute_blocks(1);
  EXPECT_DOUBLE_EQ(est.activations - estimate_memory(rc, 1).activations, 4 * ((6 * C + H + 2 * F) - C) * N);
  // Data parallelism splits the batch: 8 ranks on 8 machines need an eighth of the activations each.
  EXPECT_DOUBLE_EQ(estimate_memory(c, 8).activations, est.activations / 8);
  host.bytes = 1.0 * (1ull << 30);
  EXPECT_NO_THROW(check_memory(parse_ok(""), 1, host, "t.pbtxt"));
  EXPECT_LT(estimate_memory(parse_ok(""), 1).total(), 64.0 * (1 << 20));
  // Two ranks sharing the memory need twice one rank's.
  const double one = estimate_memory(parse_ok(""), 2).total();
  MemoryPool gpu;
  gpu.ranks = 2;
  gpu.holder = "GPU 1";
  gpu.kind = "memory";
  gpu.bytes = 2.01 * one;
  EXPECT_NO_THROW(check_memory(parse_ok(""), 2, gpu, "t.pbtxt"));
  gpu.bytes = 1.99 * one;
  const std::string g = error_of([&] { check_memory(parse_ok(""), 2, gpu, "t.pbtxt"); });
  EXPECT_NE(g.find("(2 ranks share GPU 1, "), std::string::npos) << g;
  EXPECT_NE(g.find(" each)"), std::string::npos) << g;
  EXPECT_NE(g.find("but GPU 1 has "), std::string::npos) << g;
  EXPECT_NE(g.find(" of memory; lower"), std::string::npos) << g;
  EXPECT_GT(physical_memory_bytes(), 0);
}

TEST(Config, ReduceScatterGradsNeedsShardedMoments) {
  EXPECT_TRUE(parse_ok("parallel { shard_optimizer: true reduce_scatter_grads: true }").parallel().reduce_scatter_grads());
  expect_invalid("parallel { reduce_scatter_grads: true }",
                 "parallel.reduce_scatter_grads = true: needs parallel.shard_optimizer (a rank receives the gradient "
                 "sums of the moments it keeps)");
}

// Values and gradients take 8 bytes a parameter; AdamW's moments 8 more,
// split over the ranks that hold the same parameters under
// parallel.shard_optimizer: the dense ones over the world, a rank's experts
// over their world / ep replicas.
TEST(Config, MemoryEstimateOfShardedMoments) {
  const Config dense = parse_ok(""), dense_sharded = parse_ok("parallel { shard_optimizer: true }");
  EXPECT_DOUBLE_EQ(estimate_memory(dense_sharded, 4).parameters, estimate_memory(dense, 4).parameters * 10 / 16);
  EXPECT_DOUBLE_EQ(estimate_memory(dense_sharded, 1).parameters, estimate_memory(dense, 1).parameters);
  const std::string moe = "moe { num_experts: 4 every_n_layers: 1 } parallel { expert_parallel: 2 ";
  const Config m = parse_ok(moe + "}"), ms = parse_ok(moe + "shard_optimizer: true }");
  const double P = estimate_memory(m, 4).parameters / 16;
  // A rank's experts: 2 of 4 in each of 2 layers, each w1, b1, w2, b2 of d 64 and hidden 256.
  const double Pe = 2 * 2 * (2 * 64 * 256 + 256 + 64);
  EXPECT_DOUBLE_EQ(estimate_memory(ms, 4).parameters, 8 * P + 8 * ((P - Pe) / 4 + Pe / 2));
  // The refusal names it where there is more than one rank and it is not set.
  MemoryPool small;
  small.bytes = 1024;
  // (1024 bytes: the parameters alone do not fit, the refusal's advice is
  // theirs; with one rank it names more ranks to shard over.)
  EXPECT_NE(error_of([&] { check_memory(m, 4, small, "t.pbtxt"); }).find("or the AdamW state (parallel.shard_optimizer) split over the ranks"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { check_memory(ms, 4, small, "t.pbtxt"); }).find("shard_optimizer"), std::string::npos);
  EXPECT_NE(error_of([&] { check_memory(m, 1, small, "t.pbtxt"); }).find("more ranks (mpirun -np N) to split the AdamW state (parallel.shard_optimizer)"),
            std::string::npos);
  // Where the activations are the excess, the world size decides as before.
  small.bytes = estimate_memory(m, 4).parameters + 1;
  EXPECT_NE(error_of([&] { check_memory(m, 4, small, "t.pbtxt"); }).find("or set parallel.shard_optimizer"),
            std::string::npos);
  small.bytes = estimate_memory(m, 1).parameters + 1;
  EXPECT_EQ(error_of([&] { check_memory(m, 1, small, "t.pbtxt"); }).find("shard_optimizer"), std::string::npos);
}

TEST(Config, TrainingMemoryIsTheHostsOrTheRanksGpu) {
  // The CPU backend draws on this machine's memory, shared by its ranks.
  const MemoryPool cpu = training_memory(parse_ok(""), 2, 3);
  EXPECT_EQ(cpu.bytes, physical_memory_bytes());
  EXPECT_EQ(cpu.ranks, 3);
  EXPECT_EQ(cpu.holder, "this machine");
  // CUDA: the GPU a rank takes (its node rank modulo the GPUs), shared by the
  // node's ranks that take the same one; unknown (nothing checked) without a GPU.
  Config cuda = parse_ok("");
  cuda.set_backend(switchyard::Config::CUDA);  // (set, not parsed: builds without CUDA refuse it at validation)
  const int gpus = cuda_device_count();
  for (const int node_ranks : {1, 3, 5})
    for (int r = 0; r < node_ranks; ++r) {
      const MemoryPool p = training_memory(cuda, r, node_ranks);
      if (gpus == 0) {
        EXPECT_EQ(p.bytes, 0);
        continue;
      }
      EXPECT_EQ(p.holder, "GPU " + std::to_string(r % gpus));
      EXPECT_EQ(p.ranks, ranks_sharing_gpu(r % gpus, gpus, node_ranks));
      EXPECT_GT(p.bytes, 1e9);
      EXPECT_EQ(p.bytes, cuda_device_memory_bytes(r % gpus));
    }
}

TEST(Config, RanksSharingAGpuAreThoseOfItsResidue) {
  for (const int gpus : {1, 2, 3, 8})
    for (int node_ranks = 1; node_ranks <= 10; ++node_ranks)
      for (int gpu = 0; gpu < gpus; ++gpu) {
        int sharing = 0;  // the ranks train_switch puts on it: r % gpus
        for (int r = 0; r < node_ranks; ++r) sharing += r % gpus == gpu;
        EXPECT_EQ(ranks_sharing_gpu(gpu, gpus, node_ranks), sharing) << gpu << " of " << gpus << ", " << node_ranks;
      }
  EXPECT_EQ(ranks_sharing_gpu(2, 3, 5), 1);  // ranks 0..4 on 3 GPUs: GPU 2 has rank 2 alone
  EXPECT_EQ(ranks_sharing_gpu(1, 3, 5), 2);  // ranks 1 and 4
}

TEST(Config, CanonicalTextIsTheResolvedConfig) {
  // A default set explicitly resolves to the same config as one left unset.
  const std::string base = canonical_config_text(parse_ok(""));
  EXPECT_EQ(canonical_config_text(parse_ok("model { d_model: 64 }")), base);
  EXPECT_NE(base.find("model.d_model = 64\n"), std::string::npos) << base;
  EXPECT_NE(base.find("moe.expert_cost = []\n"), std::string::npos) << base;
  EXPECT_NE(base.find("data.synthetic_tasks = \"CSBA\"\n"), std::string::npos) << base;
  EXPECT_TRUE(first_difference(base, base).field.empty());
  FieldDifference d = first_difference(base, canonical_config_text(parse_ok("model { d_model: 32 } train { seed: 7 }")));
  EXPECT_EQ(d.field, "model.d_model");
  EXPECT_EQ(d.a, "64");
  EXPECT_EQ(d.b, "32");
  d = first_difference(base, canonical_config_text(parse_ok("moe { num_experts: 2 expert_cost: [1, 4] }")));
  EXPECT_EQ(d.field, "moe.num_experts");
  d = first_difference(canonical_config_text(parse_ok("moe { num_experts: 2 }")),
                       canonical_config_text(parse_ok("moe { num_experts: 2 expert_cost: [1, 4] }")));
  EXPECT_EQ(d.field, "moe.expert_cost");
  EXPECT_EQ(d.a, "[]");
  EXPECT_EQ(d.b, "[1, 4]");
  // A string with a newline stays on its line.
  Config c = parse_ok("");
  c.mutable_data()->set_synthetic_tasks("C\nS");
  d = first_difference(base, canonical_config_text(c));
  EXPECT_EQ(d.field, "data.synthetic_tasks");
  EXPECT_EQ(d.b, "\"C\\nS\"");
}

TEST(Config, ExpertHiddenIsAListAndOldConfigsStillLoad) {
  // The scalar form of before is a one-value list: every expert that width.
  Config c = parse_ok("moe { num_experts: 4 expert_hidden: 128 }");
  ASSERT_EQ(c.moe().expert_hidden_size(), 1);
  EXPECT_EQ(c.moe().expert_hidden(0), 128);
  c = parse_ok("moe { num_experts: 4 expert_hidden: [64, 64, 512, 0] }");
  EXPECT_EQ(c.moe().expert_hidden_size(), 4);
  apply_override(c, "moe.expert_hidden=32,32,32,32");
  EXPECT_EQ(c.moe().expert_hidden(3), 32);
  expect_invalid("moe { num_experts: 4 expert_hidden: [64, 64] }",
                 "t.pbtxt: moe.expert_hidden = 2 values: must be empty, one value for every expert, or hold "
                 "moe.num_experts = 4 values");
  expect_invalid("moe { num_experts: 2 expert_hidden: [64, -1] }", "moe.expert_hidden[1] = -1: must be in [0, 65536]");
  parse_ok("moe { num_experts: 2 budget_mode: HARD_CAUSAL budget_estimator: EXPECTED }");
}

TEST(Config, BudgetTarget) {
  // (Experts of two sizes: a soft budget under one token's cheapest choice is refused, below.)
  parse_ok("model { ffn_hidden: 256 } moe { num_experts: 4 budget_coef: 1 expert_hidden: [32, 32, 256, 256] } "
           "budget { target: 0.8 }");
  parse_ok("moe { num_experts: 4 budget_mode: HARD } budget { target: 0.8 }");
  expect_invalid("budget { target: 0.8 }", "budget.target = 0.8: needs MoE layers (moe.num_experts > 0)");
  expect_invalid("moe { num_experts: 4 } budget { target: -1 }", "budget.target = -1: must be in (0, 64]");
  // tiny's head and attention alone are most of the dense model: a target
  // below them is refused, naming what they cost.
  expect_invalid("moe { num_experts: 4 budget_coef: 1 } budget { target: 0.1 }",
                 "budget.target = 0.1: the parts outside the experts alone cost");
  // A budget nothing holds the router to (SOFT without the budget loss, the
  // defaults) would only be reported: refused, saying what would hold it.
  expect_invalid("moe { num_experts: 4 } budget { target: 0.8 }",
                 "budget.target = 0.8: sets the MoE layers' moe.budget, but nothing holds the router to a budget with "
                 "moe.budget_mode SOFT and moe.budget_coef 0: set moe.budget_coef > 0 (the budget loss) or "
                 "moe.budget_mode HARD or HARD_CAUSAL");
  expect_invalid("moe { num_experts: 4 budget: 0.5 }",
                 "moe.budget = 0.5: nothing holds the router to a budget with moe.budget_mode SOFT and moe.budget_coef 0");
  parse_ok("model { ffn_hidden: 256 } moe { num_experts: 4 budget: 0.5 budget_coef: 0.1 expert_hidden: [32, 32, 256, "
           "256] }");
  parse_ok("moe { num_experts: 4 budget: 0.5 budget_mode: HARD_CAUSAL }");
  expect_invalid("model { n_layers: 2 } depth { every_n_layers: 2 budget: 0.3 }",
                 "depth.budget = 0.3: only the budget loss reads it, and depth.budget_coef is 0");
  parse_ok("model { n_layers: 2 } depth { every_n_layers: 2 budget: 0.3 budget_coef: 1 }");
}

TEST(Config, MissingFile) {
  EXPECT_NE(error_of([] { load_config("/nonexistent.pbtxt"); }).find("/nonexistent.pbtxt: cannot open"), std::string::npos);
}

}  // namespace
}  // namespace sy
