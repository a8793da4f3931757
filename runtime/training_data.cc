#include "runtime/training_data.h"

#include <filesystem>

#include "core/error.h"
#include "runtime/piece_codec.h"

namespace sy {

namespace {

std::string corpus_for(const Config& cfg) {
  const auto& d = cfg.data();
  if (d.source() == switchyard::DataConfig::TEXT_FILE) {
    // Validation names the field for train_switch's own config; a config
    // read back from a checkpoint (route_report, sample's evaluation) comes
    // here unvalidated against the file system, so say which field it is.
    // (validate_config's words: not_a_regular_file)
    const std::string kind = not_a_regular_file(d.path());
    if (!kind.empty())
      throw ConfigError("data.path = \"" + d.path() + "\": " + kind +
                        (kind == "no such file" ? " (paths are relative to the working directory)" : ""));
    return read_file_bytes(d.path());
  }
  return synthetic_corpus(d.synthetic_seed() != 0 ? d.synthetic_seed() : cfg.train().seed(), d.synthetic_bytes(),
                          {d.synthetic_tasks(), d.copy_gap_min(), d.copy_gap_max()});
}

Split split_of(const std::vector<TokenShard>& shards) {
  Split s;
  for (const TokenShard& t : shards) s.add(t.ids(), t.size(), t.width());
  return s;
}

// A split needs one window of seq_len + 1 ids within one shard.
void check_windows(const std::vector<TokenShard>& shards, const std::string& field, const std::string& pattern,
                   int64_t T) {
  int64_t longest = 0, total = 0;
  for (const TokenShard& s : shards) longest = std::max(longest, s.size()), total += s.size();
  if (longest >= T + 1) return;
  throw ConfigError(field + " = \"" + pattern + "\": " + std::to_string(shards.size()) + " shard" +
                    (shards.size() == 1 ? "" : "s") + " of " + std::to_string(total) + " tokens in all, the longest " +
                    std::to_string(longest) + "; a window of model.seq_len + 1 = " + std::to_string(T + 1) +
                    " tokens must fit in one shard");
}

}  // namespace

std::vector<TokenShard> open_shards(const std::string& pattern, const std::string& field, uint32_t model_vocab) {
  std::vector<TokenShard> shards;
  for (const std::string& path : expand_glob(pattern, field)) shards.emplace_back(path, model_vocab);
  return shards;
}

TrainingData::TrainingData(const Config& cfg) {
  const auto& d = cfg.data();
  const int64_t T = cfg.model().seq_len();
  if (d.source() != switchyard::DataConfig::TOKEN_FILES) {
    bytes_ = make_dataset(corpus_for(cfg), d.val_fraction(), T,
                          d.source() == switchyard::DataConfig::TEXT_FILE
                              ? "data.path = " + d.path()
                              : "data.synthetic_bytes = " + std::to_string(d.synthetic_bytes()));
    train_ = Split::of_bytes(bytes_.train);
    val_ = Split::of_bytes(bytes_.val);
    return;
  }
  tokens_ = true;
  const uint32_t V = static_cast<uint32_t>(cfg.model().vocab_size());
  train_shards_ = open_shards(d.token_files(), "data.token_files", V);
  val_shards_ = open_shards(d.val_token_files(), "data.val_token_files", V);
  check_windows(train_shards_, "data.token_files", d.token_files(), T);
  check_windows(val_shards_, "data.val_token_files", d.val_token_files(), T);
  for (const TokenShard& v : val_shards_)
    for (const TokenShard& t : train_shards_)
      if (std::filesystem::equivalent(v.path(), t.path()))
        throw ConfigError("data.val_token_files = \"" + d.val_token_files() + "\": matches " + v.path() +
                          ", a training shard too (data.token_files = \"" + d.token_files() +
                          "\"); validation shards must be separate");
  // One tokenization: every shard written with the same vocabulary (ids of
  // another tokenizer would train and evaluate as meaningless tokens).
  const TokenShard& first = train_shards_.front();
  for (const auto* shards : {&train_shards_, &val_shards_})
    for (const TokenShard& s : *shards)
      if (s.header().vocab_size != first.header().vocab_size) {
        const bool val = shards == &val_shards_;
        throw ConfigError(std::string(val ? "data.val_token_files = \"" + d.val_token_files()
                                          : "data.token_files = \"" + d.token_files()) +
                          "\": " + s.path() + " was written with vocab_size " + std::to_string(s.header().vocab_size) +
                          ", " + first.path() + " with " + std::to_string(first.header().vocab_size) +
                          ": a run's shards come from one tokenizer");
      }
  // The tokenizer is needed only to read samples, but a wrong path is
  // better found before training than after it.
  if (!d.tokenizer().empty() && !std::filesystem::is_regular_file(d.tokenizer()))
    throw ConfigError("data.tokenizer = \"" + d.tokenizer() +
                      "\": no such file (paths are relative to the working directory)");
  // ... and one that is no SentencePiece model at all, or has more pieces
  // than the model's vocabulary, would be found only by sample. (A model our
  // decoder does not read, e.g. Unigram or NFKC, passes here: sample says so,
  // and training does not need it.)
  if (!d.tokenizer().empty()) {
    int pieces = 0;
    try {
      pieces = PieceCodec::count_pieces(d.tokenizer());
    } catch (const ConfigError& e) {
      throw ConfigError("data.tokenizer = \"" + d.tokenizer() + "\": " + e.what());
    }
    if (pieces > static_cast<int>(V))
      throw ConfigError("data.tokenizer = \"" + d.tokenizer() + "\": " + std::to_string(pieces) +
                        " pieces, more than model.vocab_size = " + std::to_string(V));
    if (static_cast<uint32_t>(pieces) != first.header().vocab_size)
      throw ConfigError("data.tokenizer = \"" + d.tokenizer() + "\": " + std::to_string(pieces) + " pieces, but " +
                        first.path() + " was written with vocab_size " + std::to_string(first.header().vocab_size) +
                        ": not the tokenizer of these shards");
  }
  train_ = split_of(train_shards_);
  val_ = split_of(val_shards_);
}

std::string TrainingData::train_unit() const {
  return tokens_ ? "tokens in " + std::to_string(train_shards_.size()) + (train_shards_.size() == 1 ? " shard" : " shards") : "bytes";
}

std::string TrainingData::val_unit() const {
  return tokens_ ? "tokens in " + std::to_string(val_shards_.size()) + (val_shards_.size() == 1 ? " shard" : " shards") : "bytes";
}

}  // namespace sy
