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

// Bytes that are not UTF-8 are refused, naming the first: SentencePiece
// turned each into U+FFFD (EF BF BD), so "caf\xe9" decoded as "caf\ufffd".
TEST(Tokenizer, RefusesTextThatIsNotUtf8) {
  const std::vector<std::pair<std::string, size_t>> cases = {
      {"caf\xe9 x", 3},             // Latin-1
      {"ab\xe2\x82", 2},             // a character cut short
      {"\xc0\xaf", 0},               // overlong '/'
      {"x\xed\xa0\x80", 1},          // a surrogate
      {"\xf4\x90\x80\x80", 0},       // past U+10FFFF
      {"ok\xff", 2},
      {"caf\xc3\xa9 \xf0\x9f\x99\x82 \xef\xbf\xbf", std::string::npos}};  // valid, U+FFFF (the first plane's last) too
  for (const auto& [text, at] : cases) {
    EXPECT_EQ(invalid_utf8_at(text), at) << text;
    if (at == std::string::npos) {
      EXPECT_EQ(round_trip(tokenizer(), text), text);
      continue;
    }
    try {
      tokenizer().encode(text);
      ADD_FAILURE() << "encoded " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not UTF-8 at byte " + std::to_string(at)), std::string::npos) << e.what();
    }
  }
}

// Pieces of a long text end after a newline, else between characters: a
// line of 3-byte characters cut every 1000 bytes (not a multiple of 3) is
// cut at character starts, and each piece round-trips.
TEST(Tokenizer, PiecesEndBetweenCharacters) {
  std::string line;
  for (int i = 0; i < 1500; ++i) line += "\xe2\x82\xac";  // the euro sign
  for (const std::string& text : {line, "ab\n" + line, line + "\nend"}) {
    size_t pieces = 0;
    for (size_t s = 0; s < text.size(); ++pieces) {
      const size_t e = text_piece_end(text, s, 1000);
      ASSERT_GT(e, s);
      ASSERT_LE(e - s, 1000u);
      const std::string piece = text.substr(s, e - s);
      EXPECT_EQ(invalid_utf8_at(piece), std::string::npos) << "piece at " << s;
      EXPECT_EQ(round_trip(tokenizer(), piece), piece);
      s = e;
    }
    EXPECT_GE(pieces, 5u);
  }
  EXPECT_EQ(text_piece_end("ab\ncd", 0, 4), 3u);  // after the newline
  EXPECT_EQ(text_piece_end("abc", 0, 4), 3u);       // the whole text
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
