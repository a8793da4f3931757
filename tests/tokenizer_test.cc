// The SentencePiece tokenizer (runtime/tokenizer.h): trained with the
// project's recipe, decoding what it encoded gives the text back byte for
// byte, including characters the training text never had.
#include <gtest/gtest.h>

#include "core/error.h"
#include "runtime/tokenizer.h"

namespace sy {
namespace {

// A small English-like training text: lines of words from a fixed list, so
// BPE has merges to learn; whitespace and newlines as prose has them.
std::string training_text() {
  const char* words[] = {"the", "king", "shall", "speak", "of", "night", "and", "day", "my", "lord", "thou", "art",
                         "noble", "Romeo", "Juliet", "what", "is", "love", "sweet", "sorrow"};
  std::string s;
  uint64_t x = 12345;
  for (int line = 0; line < 400; ++line) {
    if (line % 9 == 0) s += "\nKING:\n";
    const int n = 3 + line % 6;
    for (int w = 0; w < n; ++w) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      s += words[(x >> 33) % 20];
      s += w + 1 < n ? " " : (line % 3 ? ",\n" : ".\n");
    }
  }
  return s;
}

const Tokenizer& tokenizer() {
  static const Tokenizer t = [] {
    TokenizerTraining tr;
    tr.vocab_size = 400;
    tr.texts = {training_text()};
    return Tokenizer::train(tr);
  }();
  return t;
}

std::string round_trip(const Tokenizer& t, const std::string& text) {
  const std::vector<uint32_t> ids = t.encode(text);
  for (uint32_t id : ids) EXPECT_LT(id, static_cast<uint32_t>(t.vocab_size()));
  return t.decode(std::vector<int32_t>(ids.begin(), ids.end()));
}

TEST(Tokenizer, TrainsTheRequestedVocabulary) { EXPECT_EQ(tokenizer().vocab_size(), 400); }

TEST(Tokenizer, RoundTripsItsTrainingText) {
  const std::string text = training_text();
  EXPECT_EQ(round_trip(tokenizer(), text), text);
  // BPE merged something: fewer tokens than bytes.
  EXPECT_LT(tokenizer().encode(text).size(), text.size() / 2);
}

TEST(Tokenizer, RoundTripsWhitespaceAndUnseenCharacters) {
  const std::vector<std::string> texts = {
      "",
      " ",
      "  leading and  double  spaces, trailing  ",
      "\n\n\nblank lines\n\n",
      "tab\there\r\nwindows line end",
      "unseen: caf\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac, \xf0\x9f\x99\x82, control \x01\x7f",
      "ROMEO: what is love?\nJULIET: sweet sorrow.\n",
  };
  for (const std::string& t : texts) EXPECT_EQ(round_trip(tokenizer(), t), t) << "text: " << t;
}

TEST(Tokenizer, SavedModelLoadsAndEncodesAlike) {
  const Tokenizer again = Tokenizer::from_proto(tokenizer().serialized(), "copy");
  const std::string text = "my lord, the king shall speak\n";
  EXPECT_EQ(again.encode(text), tokenizer().encode(text));
  EXPECT_THROW(Tokenizer::from_proto("not a model proto", "x.model"), ConfigError);
  EXPECT_THROW(Tokenizer::load("/nonexistent/x.model"), ConfigError);
}

}  // namespace
}  // namespace sy
