// runtime/piece_codec.h on a hand-built BPE model: merges by score with
// the leftmost of equals first, byte fallback, decoding, refusals.
#include <gtest/gtest.h>

#include <cstdio>

#include "core/error.h"
#include "runtime/piece_codec.h"
#include "sentencepiece_model.pb.h"

namespace sy {
namespace {

using Model = switchyard::spm::ModelProto;
using Piece = switchyard::spm::ModelProto::SentencePiece;
const std::string kSp = "\xe2\x96\x81";  // "▁"

// Ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then the normal
// pieces in this order from 259.
const std::vector<std::pair<std::string, float>> kNormal = {
    {"a", 0}, {"b", 0}, {"c", 0}, {kSp, 0}, {"ab", -1}, {"bc", -0.5f}, {"abc", -2}, {kSp + "a", -3}, {"bb", -1.5f}};
int32_t id_of(const std::string& p) {
  for (size_t i = 0; i < kNormal.size(); ++i)
    if (kNormal[i].first == p) return 259 + static_cast<int32_t>(i);
  return -1;
}
int32_t byte_id(unsigned char b) { return 3 + b; }

Model model(bool dummy_prefix = false) {
  Model m;
  auto add = [&](const std::string& s, float score, Piece::Type t) {
    Piece* p = m.add_pieces();
    p->set_piece(s);
    p->set_score(score);
    p->set_type(t);
  };
  add("<unk>", 0, Piece::UNKNOWN);
  add("<s>", 0, Piece::CONTROL);
  add("</s>", 0, Piece::CONTROL);
  for (int b = 0; b < 256; ++b) {
    char s[8];
    std::snprintf(s, sizeof s, "<0x%02X>", b);
    add(s, 0, Piece::BYTE);
  }
  for (const auto& [s, score] : kNormal) add(s, score, Piece::NORMAL);
  m.mutable_trainer_spec()->set_model_type(Model::TrainerSpec::BPE);
  m.mutable_trainer_spec()->set_byte_fallback(true);
  m.mutable_normalizer_spec()->set_name("identity");
  m.mutable_normalizer_spec()->set_add_dummy_prefix(dummy_prefix);
  m.mutable_normalizer_spec()->set_remove_extra_whitespaces(false);
  return m;
}

PieceCodec codec(const Model& m) { return PieceCodec::parse(m.SerializeAsString(), "t.model"); }

TEST(PieceCodec, MergesHighestScoreFirst) {
  const PieceCodec c = codec(model());
  EXPECT_EQ(c.vocab_size(), 259 + static_cast<int>(kNormal.size()));
  // a b c: "bc" (-0.5) before "ab" (-1), then a + bc = "abc" (-2).
  EXPECT_EQ(c.encode("abc"), std::vector<int32_t>({id_of("abc")}));
  // b b b: two equal "bb" pairs; the leftmost merges, leaving "bb" "b".
  EXPECT_EQ(c.encode("bbb"), std::vector<int32_t>({id_of("bb"), id_of("b")}));
  // a b ▁ a b: both "ab" (-1) merge before "▁a" (-3), whose pair is then stale.
  EXPECT_EQ(c.encode("ab ab"), std::vector<int32_t>({id_of("ab"), id_of(kSp), id_of("ab")}));
  // ▁ a c: "▁a" merges; "c" stays.
  EXPECT_EQ(c.encode(" ac"), std::vector<int32_t>({id_of(kSp + "a"), id_of("c")}));
  EXPECT_EQ(c.encode(""), std::vector<int32_t>());
}

TEST(PieceCodec, UnknownCharactersFallBackToBytes) {
  const PieceCodec c = codec(model());
  // "é" is C3 A9 in UTF-8, not a piece: its two byte pieces.
  EXPECT_EQ(c.encode("a\xc3\xa9"), std::vector<int32_t>({id_of("a"), byte_id(0xC3), byte_id(0xA9)}));
  EXPECT_EQ(c.encode("\n"), std::vector<int32_t>({byte_id('\n')}));
  Model m = model();
  m.mutable_trainer_spec()->set_byte_fallback(false);
  EXPECT_EQ(codec(m).encode("a\xc3\xa9"), std::vector<int32_t>({id_of("a"), 0}));
  // Without byte fallback a run of unknown characters is one <unk>, as
  // SentencePiece encodes it; a piece between two runs splits them.
  EXPECT_EQ(codec(m).encode("\xc3\xa9\xc3\xa8xa\xc3\xa9"), std::vector<int32_t>({0, id_of("a"), 0}));
  // With it, each character's bytes.
  EXPECT_EQ(c.encode("\xc3\xa9x"), std::vector<int32_t>({byte_id(0xC3), byte_id(0xA9), byte_id('x')}));
}

TEST(PieceCodec, DecodesWhatItEncodes) {
  const PieceCodec c = codec(model());
  for (const std::string t : {"abc", "bbb ab  ab", " leading", "caf\xc3\xa9\n\tx", "ab\xe6\x97\xa5"})
    EXPECT_EQ(c.decode(c.encode(t)), t) << t;
  // Control pieces decode to nothing, <unk> to " ⁇ ".
  EXPECT_EQ(c.decode({1, id_of("a"), 2, 0}), "a \xe2\x81\x87 ");
  EXPECT_THROW(c.decode({100000}), Error);
}

TEST(PieceCodec, DummyPrefixIsAddedAndRemoved) {
  const PieceCodec c = codec(model(true));
  EXPECT_EQ(c.encode("ab"), std::vector<int32_t>({id_of(kSp), id_of("ab")}));
  EXPECT_EQ(c.decode(c.encode("ab c")), "ab c");
  EXPECT_EQ(c.decode(c.encode(" ab")), " ab");
  // Only the "▁" that starts the first piece with a surface is the prefix's
  // (after control pieces, which have none); a space that <unk>'s surface
  // or a byte piece starts with is text, as SentencePiece decodes it.
  EXPECT_EQ(c.decode({1, id_of(kSp + "a"), id_of("b")}), "ab");
  EXPECT_EQ(c.decode({0, id_of("a")}), " \xe2\x81\x87 a");
  EXPECT_EQ(c.decode({byte_id(' '), id_of("a")}), " a");
  EXPECT_EQ(c.decode({id_of("a"), id_of(kSp + "a")}), "a a");
}

TEST(PieceCodec, PromptIdsPutTheBosFirst) {
  const PieceCodec c = codec(model(true));
  EXPECT_EQ(prompt_ids(c, "ab", 1), std::vector<int32_t>({1, id_of(kSp), id_of("ab")}));
  EXPECT_EQ(prompt_ids(c, "ab", -1), std::vector<int32_t>({id_of(kSp), id_of("ab")}));
  EXPECT_EQ(prompt_ids(c, "", 1), std::vector<int32_t>({1}));  // (the bos alone: enough to go on from)
  EXPECT_EQ(prompt_ids(c, "", -1), c.encode("\n"));
  EXPECT_EQ(c.decode(prompt_ids(c, "ab c", 1)), "ab c");  // (a control piece, then the dummy prefix removed)
  EXPECT_THROW(prompt_ids(c, "ab", c.vocab_size()), Error);
}

std::string refusal(const Model& m) {
  try {
    codec(m);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(PieceCodec, RefusesWhatItCannotEncode) {
  Model m = model();
  m.mutable_trainer_spec()->set_model_type(Model::TrainerSpec::UNIGRAM);
  EXPECT_EQ(refusal(m), "t.model: trainer_spec.model_type = UNIGRAM: only BPE models are read here (examples/tokenize trains them)");
  m = model();
  m.mutable_normalizer_spec()->set_name("nmt_nfkc");
  EXPECT_NE(refusal(m).find("t.model: normalizer_spec.name = \"nmt_nfkc\": only \"identity\""), std::string::npos);
  m = model();
  m.mutable_normalizer_spec()->set_remove_extra_whitespaces(true);
  EXPECT_NE(refusal(m).find("normalizer_spec.remove_extra_whitespaces = true"), std::string::npos);
  m = model();
  m.mutable_pieces(5)->set_piece("<0xZZ>");
  EXPECT_NE(refusal(m).find("pieces[5] = \"<0xZZ>\": a byte piece must be <0xNN>"), std::string::npos);
  EXPECT_NE(refusal(Model()).find("t.model: not a SentencePiece model"), std::string::npos);
  try {
    PieceCodec::parse("\xff\xff\xff garbage", "g.model");
    ADD_FAILURE() << "garbage accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("g.model: not a SentencePiece model"), std::string::npos);
  }
}

}  // namespace
}  // namespace sy
