// What a run trains and evaluates on, as the config's data section says:
//   SYNTHETIC, TEXT_FILE  a byte corpus split into head (train) and tail (val)
//   TOKEN_FILES           the shards data.token_files and data.val_token_files
//                         match, memory-mapped and checked (runtime/token_shard.h)
// The object owns the memory its splits view, so it is neither copied nor
// moved; the trainer holds one for its lifetime.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "runtime/config.h"
#include "runtime/data.h"
#include "runtime/token_shard.h"

namespace sy {

class TrainingData {
 public:
  // ConfigError (one line) for a pattern that matches nothing, a bad shard,
  // a split without one window of seq_len + 1 ids, a missing data.tokenizer.
  explicit TrainingData(const Config& cfg);
  TrainingData(const TrainingData&) = delete;
  TrainingData& operator=(const TrainingData&) = delete;

  const Split& train() const { return train_; }
  const Split& val() const { return val_; }
  bool tokens() const { return tokens_; }  // token shards, not bytes
  // "bytes" or "tokens in N shards": how run_summary names the splits' sizes.
  std::string train_unit() const;
  std::string val_unit() const;

 private:
  bool tokens_ = false;
  Dataset bytes_;
  std::vector<TokenShard> train_shards_, val_shards_;
  Split train_, val_;
};

// The shards a pattern matches, opened and checked for model.vocab_size;
// `field` names the pattern in errors.
std::vector<TokenShard> open_shards(const std::string& pattern, const std::string& field, uint32_t model_vocab);

}  // namespace sy
