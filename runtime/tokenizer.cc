#include "runtime/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "core/error.h"

namespace sy {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string proto;
};

namespace {

// Chunks of whole lines, each at most `max` bytes (a longer line is cut).
class ChunkIterator : public sentencepiece::SentenceIterator {
 public:
  ChunkIterator(const std::vector<std::string>& texts, size_t max) {
    for (const std::string& t : texts)
      for (size_t s = 0; s < t.size();) {
        const size_t e = text_piece_end(t, s, max);
        chunks_.push_back(t.substr(s, e - s));
        s = e;
      }
  }
  bool done() const override { return i_ >= chunks_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return chunks_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string> chunks_;
  size_t i_ = 0;
};

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_proto(const std::string& serialized, const std::string& name) {
  auto impl = std::make_unique<Impl>();
  const auto st = impl->sp.LoadFromSerializedProto(serialized);
  // SentencePiece's message names its own source line and the call that
  // failed ("./src/sentencepiece_processor.cc(232) [model_proto->...]"),
  // which says nothing to a user: a file that does not parse is said so.
  if (!st.ok()) {
    const std::string m = st.ToString();
    const bool unparsed = m.find("ParseFromArray") != std::string::npos;
    throw ConfigError(name + ": not a SentencePiece model" +
                      (unparsed ? std::string(" (its bytes do not parse as a SentencePiece ModelProto)") : ": " + m));
  }
  impl->proto = serialized;
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot open the tokenizer model");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_proto(ss.str(), path);
}

namespace {

// SentencePiece's refusals of a vocabulary size, said in our terms (its
// message names the source line and an option, --character_coverage, that
// the tokenizer fixes at 1.0); anything else as it comes.
std::string training_failure(const std::string& status, int vocab_size) {
  const std::string v = "vocab_size " + std::to_string(vocab_size) + ": ";
  int a = 0, b = 0;
  const std::string smaller = "Vocabulary size is smaller than required_chars. ";
  size_t at = status.find(smaller);
  if (at != std::string::npos && std::sscanf(status.c_str() + at + smaller.size(), "%d vs %d", &a, &b) == 2)
    return v + "fewer pieces than the " + std::to_string(b) +
           " that the text's distinct characters and the special and byte pieces need: raise it";
  const std::string high = "Please set it to a value <= ";
  at = status.find(high);
  if (at != std::string::npos && std::sscanf(status.c_str() + at + high.size(), "%d", &b) == 1)
    return v + "more pieces than this text yields (at most " + std::to_string(b) +
           "): lower it, or train on more text";
  if (status.find("!sentences_.empty()") != std::string::npos) return "tokenizer training: no text to train on";
  return "tokenizer training failed: " + status;
}

}  // namespace

Tokenizer Tokenizer::train(const TokenizerTraining& t) {
  ChunkIterator chunks(t.texts, static_cast<size_t>(t.max_chunk));
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(t.vocab_size)},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"character_coverage", "1.0"},
      {"byte_fallback", "true"},
      {"max_sentence_length", std::to_string(t.max_chunk + 16)},
      {"num_threads", std::to_string(t.threads)},
      {"minloglevel", "2"},  // errors only (what fails comes back in the status, said below in one line)
  };
  std::string proto;
  const auto st = sentencepiece::SentencePieceTrainer::Train(args, &chunks, &proto);
  if (!st.ok()) throw ConfigError(training_failure(st.ToString(), t.vocab_size));
  return from_proto(proto, "the trained tokenizer");
}

int Tokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }

size_t text_piece_end(const std::string& text, size_t begin, size_t max) {
  size_t e = std::min(text.size(), begin + max);
  if (e >= text.size()) return e;
  const size_t nl = text.rfind('\n', e - 1);
  if (nl != std::string::npos && nl >= begin) return nl + 1;
  size_t c = e;  // back to the first byte of the character at e
  while (c > begin && (static_cast<unsigned char>(text[c]) & 0xC0) == 0x80) --c;
  return c > begin ? c : e;
}

std::vector<uint32_t> Tokenizer::encode(const std::string& text) const {
  if (const std::string bad = utf8_problem(text); !bad.empty())
    throw Error("tokenizer: the text is " + bad +
                ": SentencePiece would replace it with U+FFFD, and decoding would not give the text back");
  std::vector<int> ids;
  const auto st = impl_->sp.Encode(text, &ids);
  if (!st.ok()) throw Error("tokenizer: cannot encode: " + st.ToString());
  return std::vector<uint32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  const auto st = impl_->sp.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
  if (!st.ok()) throw Error("tokenizer: cannot decode: " + st.ToString());
  return out;
}

std::string Tokenizer::piece(int32_t id) const { return impl_->sp.IdToPiece(id); }

const std::string& Tokenizer::serialized() const { return impl_->proto; }

}  // namespace sy
