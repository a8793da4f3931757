// Encoding and decoding with a SentencePiece BPE model file, read with the
// project's own protobuf (configs/sentencepiece_model.proto) instead of
// linking SentencePiece: examples/sample uses it. (Debian's
// libsentencepiece carries its own protobuf 3.14 and exports its symbols,
// so it cannot share a process with the protobuf the configs use; and the
// GPU machine has no SentencePiece at all.)
//
// Encoding (as SentencePiece's BPE model does it): spaces become U+2581
// ("▁"), the text is split into UTF-8 characters, and then, repeatedly, the
// adjacent pair whose concatenation is a piece of highest score (the
// leftmost among equals) is merged, until no pair is a piece. Each symbol
// left is its piece's id; one that is not a piece becomes its bytes'
// <0xNN> pieces (byte fallback) or <unk>, a run of such symbols one <unk>.
// Decoding: byte pieces give their byte, control pieces nothing, <unk> " ⁇ ",
// other pieces their text with "▁" as a space.
//
// Supported: BPE models with the "identity" normaliser that keep whitespace
// as it is (examples/tokenize's recipe, runtime/tokenizer.h); others are
// refused with one line naming the field.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace sy {

class PieceCodec {
 public:
  // ConfigError (one line naming the file and the field) for a file that is
  // not such a model.
  static PieceCodec load(const std::string& path);
  static PieceCodec parse(const std::string& serialized, const std::string& name);
  // The pieces of any SentencePiece model (BPE or not, whatever its
  // normaliser: what training checks against model.vocab_size); ConfigError
  // for a file that cannot be read or is no such model at all.
  static int count_pieces(const std::string& path);

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;

 private:
  enum Type { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int> types_;
  std::unordered_map<std::string, int32_t> mergeable_;  // normal, user-defined and unused pieces
  int32_t byte_ids_[256];
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false, dummy_prefix_ = false;
};

// The ids a generation from `prompt` starts with: bos_id first (a config's
// data.bos_id; none where it is -1), then the prompt's ids; an empty prompt
// with no bos is a newline's (the model needs one id to go on from).
std::vector<int32_t> prompt_ids(const PieceCodec& codec, const std::string& prompt, int32_t bos_id);

}  // namespace sy
