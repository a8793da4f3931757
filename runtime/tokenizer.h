// A SentencePiece BPE tokenizer (Kudo & Richardson 2018; Debian's
// libsentencepiece-dev): trained on text with a recipe under which decoding
// gives back every byte of the encoded text, or loaded from a .model file.
//
// The recipe: BPE; no normalisation ("identity" rule, whitespace kept as it
// is, no dummy space prefixed), every character of the training text in the
// vocabulary (character_coverage 1) and byte fallback, so a character the
// training text lacks becomes its UTF-8 bytes' pieces instead of <unk>.
// Newlines are ordinary characters: the training text goes in as chunks of
// whole lines, so pieces such as "\n\n" or ":\n" can be learnt.
//
// Built only where SentencePiece is found (CMake: SY_WITH_SENTENCEPIECE);
// the GPU machine lacks it, and nothing else depends on this.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/utf8.h"

namespace sy {

struct TokenizerTraining {
  int vocab_size = 2048;  // pieces, the 3 control ids and 256 byte pieces included
  int threads = 1;
  // Training texts as one string each (files' contents); each is cut into
  // chunks of whole lines of at most max_chunk bytes.
  std::vector<std::string> texts;
  int max_chunk = 4000;
};

// (invalid_utf8_at, core/utf8.h: SentencePiece replaces a byte that is not
// UTF-8 with U+FFFD before byte fallback can see it, so decoding would not
// give the text back: encode() refuses it.)

// Where a piece of `text` that starts at `begin` and holds at most `max`
// bytes (max >= 4) ends: after its last newline, else at `max` bytes backed
// off to the start of a character (a cut inside one would leave two invalid
// halves), else at the end of the text.
size_t text_piece_end(const std::string& text, size_t begin, size_t max);

class Tokenizer {
 public:
  // Error (one line naming the path) when the file is not a SentencePiece model.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_proto(const std::string& serialized, const std::string& name);
  static Tokenizer train(const TokenizerTraining& t);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  int vocab_size() const;
  // Error naming the byte where `text` is not UTF-8 (invalid_utf8_at).
  std::vector<uint32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string piece(int32_t id) const;
  const std::string& serialized() const;  // the model proto, what a .model file holds

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sy
