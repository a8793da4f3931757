// Token shards: flat binary files of token ids that examples/tokenize writes
// and data.source TOKEN_FILES trains on.
//
// Layout (little-endian), a 32-byte header and then the ids:
//   offset  size  field
//        0     8  magic       "SYTOKENS"
//        8     4  version     1
//       12     4  dtype       bytes per id: 2 (uint16) or 4 (uint32)
//       16     8  count       ids after the header
//       24     4  vocab_size  the vocabulary the ids were written with: every
//                             id is below it; [1, 2^20], and <= 65536 with dtype 2
//       28     4  reserved    0
//       32  count*dtype       the ids
// So the file holds exactly 32 + count * dtype bytes. The header starts on a
// page boundary when mapped, so the ids are aligned for their type.
//
// Reading checks everything a reader would otherwise trust: the header's
// fields, the file's size against count (a truncated copy, or trailing
// bytes), the header's vocabulary against the model's, and every id against
// the model's vocabulary. Each refusal is a ConfigError of one line naming
// the file, the field, its value and what is allowed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/mapped_file.h"

namespace sy {

constexpr uint64_t kShardHeaderBytes = 32;
constexpr char kShardMagic[8] = {'S', 'Y', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr uint32_t kShardVersion = 1;
constexpr uint32_t kMaxVocab = 1u << 20;  // model.vocab_size's upper bound

struct ShardHeader {
  uint32_t version = kShardVersion;
  uint32_t dtype = 2;  // bytes per id
  uint64_t count = 0;
  uint32_t vocab_size = 0;
};

// Parses the header at `bytes` (the file's first n bytes; n may be short)
// of a file of `file_size` bytes and checks it on its own and against the
// size; ConfigError naming `name` on the first field that is wrong.
ShardHeader parse_shard_header(const std::string& name, const unsigned char* bytes, uint64_t n, uint64_t file_size);

// The 32 header bytes for `h`.
std::string shard_header_bytes(const ShardHeader& h);

// Writes ids as a shard (dtype 2 when vocab_size <= 65536, else 4) through a
// temporary file renamed into place, so a reader never sees half a shard.
// Error when an id is >= vocab_size.
void write_token_shard(const std::string& path, const std::vector<uint32_t>& ids, uint32_t vocab_size);

// One shard, memory-mapped.
class TokenShard {
 public:
  // Opens and checks `path` for a model of `model_vocab` ids: the header,
  // the size, header vocab_size <= model_vocab and every id < model_vocab.
  TokenShard(const std::string& path, uint32_t model_vocab);
  const std::string& path() const { return file_.path(); }
  const ShardHeader& header() const { return header_; }
  int64_t size() const { return static_cast<int64_t>(header_.count); }
  const void* ids() const { return file_.data() ? file_.data() + kShardHeaderBytes : nullptr; }
  int width() const { return static_cast<int>(header_.dtype); }
  uint32_t id(int64_t i) const;

 private:
  MappedFile file_;
  ShardHeader header_;
};

// The files a glob pattern matches, sorted (glob(3)); ConfigError naming
// `field` and the pattern when it matches none.
std::vector<std::string> expand_glob(const std::string& pattern, const std::string& field);

}  // namespace sy
