#include "runtime/piece_codec.h"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "core/error.h"
#include "core/file.h"
#include "sentencepiece_model.pb.h"

namespace sy {

namespace {

const std::string kSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's whitespace mark

// Bytes of the UTF-8 character starting with c (1 for a stray byte).
size_t char_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;
}

switchyard::spm::ModelProto read_model(const std::string& serialized, const std::string& name) {
  switchyard::spm::ModelProto m;
  if (!m.ParseFromString(serialized) || m.pieces_size() == 0)
    throw ConfigError(name + ": not a SentencePiece model (no pieces could be read)");
  return m;
}

}  // namespace

PieceCodec PieceCodec::load(const std::string& path) {
  return parse(read_whole_file(path, "the tokenizer model"), path);
}

int PieceCodec::count_pieces(const std::string& path) {
  return read_model(read_whole_file(path, "the tokenizer model"), path).pieces_size();
}

PieceCodec PieceCodec::parse(const std::string& serialized, const std::string& name) {
  const switchyard::spm::ModelProto m = read_model(serialized, name);
  using Spec = switchyard::spm::ModelProto;
  if (m.trainer_spec().model_type() != Spec::TrainerSpec::BPE)
    throw ConfigError(name + ": trainer_spec.model_type = " +
                      Spec::TrainerSpec::ModelType_Name(m.trainer_spec().model_type()) +
                      ": only BPE models are read here (examples/tokenize trains them)");
  const auto& n = m.normalizer_spec();
  if (n.name() != "identity")
    throw ConfigError(name + ": normalizer_spec.name = \"" + n.name() +
                      "\": only \"identity\" (no normalisation) is read here (examples/tokenize's recipe)");
  if (n.remove_extra_whitespaces())
    throw ConfigError(name + ": normalizer_spec.remove_extra_whitespaces = true: must be false (whitespace kept as it is)");
  if (!n.escape_whitespaces())
    throw ConfigError(name + ": normalizer_spec.escape_whitespaces = false: must be true");
  PieceCodec c;
  c.byte_fallback_ = m.trainer_spec().byte_fallback();
  c.dummy_prefix_ = n.add_dummy_prefix();
  std::fill(std::begin(c.byte_ids_), std::end(c.byte_ids_), -1);
  for (int i = 0; i < m.pieces_size(); ++i) {
    const auto& p = m.pieces(i);
    c.pieces_.push_back(p.piece());
    c.scores_.push_back(p.score());
    c.types_.push_back(p.type());
    switch (p.type()) {
      case Spec::SentencePiece::UNKNOWN: c.unk_id_ = i; break;
      case Spec::SentencePiece::BYTE: {
        unsigned v = 0;
        if (p.piece().size() != 6 || std::sscanf(p.piece().c_str(), "<0x%2X>", &v) != 1 || v > 255)
          throw ConfigError(name + ": pieces[" + std::to_string(i) + "] = \"" + p.piece() +
                            "\": a byte piece must be <0xNN>");
        c.byte_ids_[v] = i;
        break;
      }
      case Spec::SentencePiece::CONTROL: break;
      default: c.mergeable_.emplace(p.piece(), i);
    }
  }
  if (c.unk_id_ < 0) throw ConfigError(name + ": pieces: no piece of type UNKNOWN");
  return c;
}

std::vector<int32_t> PieceCodec::encode(const std::string& text) const {
  std::string s = dummy_prefix_ && !text.empty() ? kSpace : "";
  for (char ch : text) s += ch == ' ' ? kSpace : std::string(1, ch);
  // Symbols as a linked list over [begin, begin + len) of s.
  struct Symbol {
    size_t begin, len;
    int prev, next;
  };
  std::vector<Symbol> sym;
  for (size_t i = 0; i < s.size();) {
    const size_t len = std::min(char_len(static_cast<unsigned char>(s[i])), s.size() - i);
    const int k = static_cast<int>(sym.size());
    sym.push_back({i, len, k - 1, -1});
    if (k > 0) sym[k - 1].next = k;
    i += len;
  }
  struct Pair {
    float score;
    int left, right;
    size_t len;
  };
  // Highest score first; among equal scores the leftmost.
  auto lower = [](const Pair& a, const Pair& b) { return a.score < b.score || (a.score == b.score && a.left > b.left); };
  std::priority_queue<Pair, std::vector<Pair>, decltype(lower)> agenda(lower);
  auto consider = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    const auto it = mergeable_.find(s.substr(sym[l].begin, sym[l].len + sym[r].len));
    if (it != mergeable_.end()) agenda.push({scores_[it->second], l, r, sym[l].len + sym[r].len});
  };
  for (size_t i = 1; i < sym.size(); ++i) consider(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!agenda.empty()) {
    const Pair p = agenda.top();
    agenda.pop();
    // Stale: one side was merged away or grew since the pair was pushed.
    if (sym[p.left].len == 0 || sym[p.right].len == 0 || sym[p.left].len + sym[p.right].len != p.len) continue;
    sym[p.left].len = p.len;
    sym[p.left].next = sym[p.right].next;
    if (sym[p.right].next >= 0) sym[sym[p.right].next].prev = p.left;
    sym[p.right].len = 0;
    consider(sym[p.left].prev, p.left);
    consider(p.left, sym[p.left].next);
  }
  std::vector<int32_t> ids;
  bool prev_unknown = false;  // the last symbol was not a piece and became <unk>
  for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[i].next) {
    const std::string piece = s.substr(sym[i].begin, sym[i].len);
    const auto it = mergeable_.find(piece);
    if (it != mergeable_.end()) {
      ids.push_back(it->second);
      prev_unknown = false;
      continue;
    }
    bool bytes = byte_fallback_;
    for (unsigned char b : piece) bytes = bytes && byte_ids_[b] >= 0;
    if (!bytes) {
      // A run of unknown symbols is one <unk>, as SentencePiece encodes it
      // (its PopulateSentencePieceText merges them): the ids the training
      // shards hold for the same text.
      if (!prev_unknown) ids.push_back(unk_id_);
      prev_unknown = true;
      continue;
    }
    prev_unknown = false;
    for (unsigned char b : piece) ids.push_back(byte_ids_[b]);
  }
  return ids;
}

std::string PieceCodec::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  // The dummy prefix's space is the "▁" that starts the first piece with a
  // surface (control pieces have none), and only that: SentencePiece's
  // decoder consumes it there, not a space that <unk>'s surface or a byte
  // piece begins with.
  bool first = true;
  for (size_t k = 0; k < ids.size(); ++k) {
    const int32_t id = ids[k];
    SY_CHECK(id >= 0 && id < vocab_size(), "piece id " << id << " outside the tokenizer's " << vocab_size());
    const bool at_start = first;
    if (types_[id] != kControl) first = false;
    switch (types_[id]) {
      case kControl: break;
      case kUnknown: out += " \xe2\x81\x87 "; break;  // " ⁇ ", SentencePiece's surface for <unk>
      case kByte: {
        unsigned v = 0;
        std::sscanf(pieces_[id].c_str(), "<0x%2X>", &v);
        out += static_cast<char>(v);
        break;
      }
      default: {
        std::string piece = pieces_[id];
        if (at_start && dummy_prefix_ && piece.compare(0, kSpace.size(), kSpace) == 0) piece.erase(0, kSpace.size());
        for (size_t p; (p = piece.find(kSpace)) != std::string::npos;) piece.replace(p, kSpace.size(), " ");
        out += piece;
      }
    }
  }
  return out;
}

std::vector<int32_t> prompt_ids(const PieceCodec& codec, const std::string& prompt, int32_t bos_id) {
  SY_CHECK(bos_id >= -1 && bos_id < codec.vocab_size(),
           "bos id " << bos_id << " outside the tokenizer's " << codec.vocab_size() << " pieces");
  std::vector<int32_t> ids;
  if (bos_id >= 0) ids.push_back(bos_id);
  const std::vector<int32_t> text = codec.encode(prompt.empty() && bos_id < 0 ? std::string("\n") : prompt);
  ids.insert(ids.end(), text.begin(), text.end());
  return ids;
}

}  // namespace sy
