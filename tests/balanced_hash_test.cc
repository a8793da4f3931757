// Balanced hash routing (moe.hash_assignment BALANCED; ops/hash_routing.h):
// the table by hand (the greedy order, both ties), the keys it gives, a
// model that routes every token of every MoE layer by it, training that
// fills it from the training split before its first step and checkpoints
// that carry it (a resume with another table, or another assignment,
// refused; one with a config file of its own takes the checkpoint's), and
// the config's refusals.
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "core/rng.h"
#include "tests/config_error.h"
#include "ops/hash_routing.h"
#include "runtime/checkpoint.h"
#include "runtime/moe_layer.h"
#include "runtime/trainer.h"
#include "runtime/training_data.h"
#include "tests/temp_dir.h"

namespace sy {
namespace {

TEST(BalancedHash, TheTableByHand) {
  // Counts 5, 1, 4, 2, 2 over 2 experts: ids 0 (5), 2 (4), 3, 4 (2 each, the
  // lower first), 1 (1), each to the lighter expert: 0 -> e0 (5, 0), 2 -> e1
  // (5, 4), 3 -> e1 (5, 6), 4 -> e0 (7, 6), 1 -> e1 (7, 7).
  EXPECT_EQ(ops::balanced_hash_table({5, 1, 4, 2, 2}, 2), (std::vector<int32_t>{0, 1, 1, 1, 0}));
  // Equal counts and equal loads: the lower id first, to the lower expert.
  EXPECT_EQ(ops::balanced_hash_table({3, 3, 3}, 2), (std::vector<int32_t>{0, 1, 0}));
  // Unseen ids (count 0) go last, to the lightest expert.
  EXPECT_EQ(ops::balanced_hash_table({0, 9, 0, 1}, 3), (std::vector<int32_t>{2, 0, 2, 1}));
  // A frequent id keeps its expert to itself.
  EXPECT_EQ(ops::balanced_hash_table({100, 1, 1, 1, 1}, 2), (std::vector<int32_t>{0, 1, 1, 1, 1}));
}

TEST(BalancedHash, KeysNameTheTablesExpert) {
  const int64_t G = 3;
  const std::vector<int32_t> ids = {4, 0, 2, 4, 1}, table = {2, 0, 1, 1, 0};
  Tensor k = Tensor::empty({5, G}, DType::f32, host_ctx());
  ops::hash_route_keys(host_ctx(), k, Tensor::from_host(ids), 7, Tensor::from_host(table));
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t g = 0; g < G; ++g)
      EXPECT_EQ(k.f32()[i * G + g], g == table[ids[i]] ? 0.f : -std::numeric_limits<float>::infinity()) << i;
}

Config balanced_config(const std::string& extra = "") {
  Config c = parse_config(R"(
    model { d_model: 16 n_layers: 2 n_heads: 2 ffn_hidden: 24 seq_len: 8 }
    moe { num_experts: 4 every_n_layers: 1 router: HASH hash_assignment: BALANCED capacity_factor_eval: 4
          load_balance_coef: 0 }
    train { batch: 2 steps: 2 warmup_steps: 1 eval_batches: 1 seed: 5 }
    data { synthetic_bytes: 20000 }
  )" + extra, "test");
  validate_config(c, "test");
  return c;
}

TEST(BalancedHash, AModelRoutesEveryTokenByTheTable) {
  Config cfg = balanced_config();
  Rng rng(4);
  std::vector<int32_t> table;
  for (int t = 0; t < 256; ++t) table.push_back(static_cast<int32_t>(rng.below(4)));
  for (int32_t g : table) cfg.mutable_moe()->add_hash_table(g);
  validate_config(cfg, "test");
  Transformer model(host_ctx(), cfg);
  model.set_training(false);
  Batch batch;
  for (int i = 0; i < 16; ++i) {
    batch.inputs.push_back(static_cast<int32_t>(rng.below(256)));
    batch.targets.push_back(0);
  }
  model.forward(batch);
  ASSERT_EQ(model.moe_layers().size(), 2u);
  for (const auto& [l, layer] : model.moe_layers()) {
    const std::vector<int32_t> group = layer->route().group.to_vector<int32_t>();
    for (size_t i = 0; i < batch.inputs.size(); ++i) EXPECT_EQ(group[i], table[batch.inputs[i]]) << l << ", " << i;
  }
  // Without its table a BALANCED model cannot route: it refuses at once.
  EXPECT_THROW(Transformer(host_ctx(), balanced_config()), Error);
}

TEST(BalancedHash, TrainingFillsTheTableAndCheckpointsCarryIt) {
  testing::TempDir dir;
  Config cfg = balanced_config();
  cfg.mutable_train()->set_checkpoint_dir(dir.path);
  const std::vector<int32_t> want =
      ops::balanced_hash_table(TrainingData(cfg).train().counts(cfg.model().vocab_size()), 4);
  std::string ck;
  {
    Trainer t(cfg, TrainOptions{});
    t.step(1);
    ck = t.write_checkpoint();
  }
  const switchyard::CheckpointManifest m = read_manifest(ck);
  const auto& got = m.config().moe().hash_table();
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.end()), want);
  Config other = m.config();
  other.mutable_moe()->set_hash_table(3, (other.moe().hash_table(3) + 1) % 4);
  EXPECT_NE(testing::error_of([&] { check_compatible(other, m, ck); }).find("moe.hash_table[3]"), std::string::npos)
      << "resumed with another table";
  Config splitmix = m.config();
  splitmix.mutable_moe()->set_hash_assignment(switchyard::MoeConfig::SPLITMIX);
  splitmix.mutable_moe()->clear_hash_table();
  EXPECT_THROW(check_compatible(splitmix, m, ck), ConfigError);
  // Resumed with a config file (train_switch --config F --resume): the file
  // has no table, and here its data differ (the synthetic corpus of another
  // seed: another table). The run takes the checkpoint's (adopt_hash_table);
  // a table made again from its own data would be refused.
  Config file = cfg;
  file.mutable_train()->set_seed(99);
  const std::vector<int32_t> other_data =
      ops::balanced_hash_table(TrainingData(file).train().counts(file.model().vocab_size()), 4);
  ASSERT_NE(other_data, want);
  Config remade = file;
  for (int32_t g : other_data) remade.mutable_moe()->add_hash_table(g);
  EXPECT_THROW(check_compatible(remade, m, ck), ConfigError);
  adopt_hash_table(file, m);
  const auto& adopted = file.moe().hash_table();
  EXPECT_EQ(std::vector<int32_t>(adopted.begin(), adopted.end()), want);
  EXPECT_NO_THROW(check_compatible(file, m, ck));  // (the seed no longer maps the ids)
  Trainer resumed(file, TrainOptions{});
  resumed.restore(ck);
  resumed.step(2);
  // The resumed model routes by the checkpoint's table.
  Transformer& model = resumed.model();
  model.set_training(false);
  Batch batch;
  Rng rng(3);
  for (int i = 0; i < 16; ++i) {
    batch.inputs.push_back(static_cast<int32_t>(rng.below(256)));
    batch.targets.push_back(0);
  }
  model.forward(batch);
  for (const auto& [l, layer] : model.moe_layers()) {
    const std::vector<int32_t> group = layer->route().group.to_vector<int32_t>();
    for (size_t i = 0; i < batch.inputs.size(); ++i) EXPECT_EQ(group[i], want[batch.inputs[i]]) << l << ", " << i;
  }
}

TEST(BalancedHash, ConfigRefusals) {
  auto refuses = [](const std::string& text, const std::string& what) {
    const std::string e = testing::error_of([&] { validate_config(parse_config(text, "t"), "t"); });
    EXPECT_NE(e.find(what), std::string::npos) << text << ": " << e;
  };
  refuses("moe { num_experts: 4 hash_assignment: BALANCED }",
          "moe.hash_assignment = BALANCED: maps token ids for hash routing: with moe.router HASH only");
  const std::string hash = "moe { num_experts: 4 router: HASH load_balance_coef: 0 ";
  refuses(hash + "hash_table: [0, 1] }", "moe.hash_table = 2 entries: BALANCED's map");
  refuses(hash + "hash_assignment: BALANCED hash_table: [0, 1] }",
          "moe.hash_table = 2 entries: one expert a token id: model.vocab_size = 256 entries");
  std::string table = "hash_table: [";
  for (int t = 0; t < 256; ++t) table += (t ? ", " : "") + std::to_string(t == 200 ? 4 : t % 4);
  refuses(hash + "hash_assignment: BALANCED " + table + "] }", "moe.hash_table[200] = 4: an expert: in [0, moe.num_experts = 4)");
}

}  // namespace
}  // namespace sy
