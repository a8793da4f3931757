#include "runtime/token_shard.h"

#include <glob.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "runtime/output_file.h"

namespace sy {

namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shards are little-endian; so is every host we build for");

template <typename T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void store(std::string& s, size_t at, T v) {
  std::memcpy(&s[at], &v, sizeof v);
}

std::string quoted_bytes(const unsigned char* p, size_t n) {
  std::string out = "\"";
  for (size_t i = 0; i < n; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') {
      out += static_cast<char>(p[i]);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", p[i]);
      out += b;
    }
  }
  return out + "\"";
}

[[noreturn]] void refuse(const std::string& name, const std::string& field, const std::string& value,
                         const std::string& allowed) {
  throw ConfigError(name + ": " + field + " = " + value + ": " + allowed);
}

}  // namespace

ShardHeader parse_shard_header(const std::string& name, const unsigned char* b, uint64_t n, uint64_t file_size) {
  if (n < kShardHeaderBytes)
    refuse(name, "file size", std::to_string(file_size) + " bytes",
           "truncated: a token shard starts with a " + std::to_string(kShardHeaderBytes) + "-byte header");
  if (std::memcmp(b, kShardMagic, sizeof kShardMagic) != 0)
    refuse(name, "magic", quoted_bytes(b, sizeof kShardMagic),
           "must be \"SYTOKENS\" (not a Switchyard token shard; examples/tokenize writes them)");
  ShardHeader h;
  h.version = load<uint32_t>(b + 8);
  h.dtype = load<uint32_t>(b + 12);
  h.count = load<uint64_t>(b + 16);
  h.vocab_size = load<uint32_t>(b + 24);
  const uint32_t reserved = load<uint32_t>(b + 28);
  if (h.version != kShardVersion)
    refuse(name, "version", std::to_string(h.version), "must be " + std::to_string(kShardVersion));
  if (h.dtype != 2 && h.dtype != 4) refuse(name, "dtype", std::to_string(h.dtype), "must be 2 (uint16) or 4 (uint32)");
  if (h.vocab_size < 1 || h.vocab_size > kMaxVocab)
    refuse(name, "vocab_size", std::to_string(h.vocab_size), "must be in [1, " + std::to_string(kMaxVocab) + "]");
  if (h.dtype == 2 && h.vocab_size > 65536)
    refuse(name, "vocab_size", std::to_string(h.vocab_size), "must be <= 65536 with dtype 2 (uint16 ids)");
  if (reserved != 0) refuse(name, "reserved", std::to_string(reserved), "must be 0");
  // count * dtype without overflow: a count beyond what any file holds is a mismatch too.
  const uint64_t payload = file_size - kShardHeaderBytes;
  if (h.count > payload / h.dtype || h.count * h.dtype != payload) {
    const bool short_file = h.count > payload / h.dtype;
    refuse(name, "count", std::to_string(h.count),
           std::string(short_file ? "truncated: " : "does not match the file size: ") + "the file has " +
               std::to_string(payload) + " bytes of ids after the header, room for " +
               std::to_string(payload / h.dtype) + (payload % h.dtype ? " ids and a partial one" : " ids"));
  }
  return h;
}

std::string shard_header_bytes(const ShardHeader& h) {
  std::string s(kShardHeaderBytes, '\0');
  std::memcpy(&s[0], kShardMagic, sizeof kShardMagic);
  store(s, 8, h.version);
  store(s, 12, h.dtype);
  store(s, 16, h.count);
  store(s, 24, h.vocab_size);
  return s;
}

void write_token_shard(const std::string& path, const std::vector<uint32_t>& ids, uint32_t vocab_size) {
  SY_CHECK(vocab_size >= 1 && vocab_size <= kMaxVocab, "shard vocabulary " << vocab_size);
  ShardHeader h;
  h.dtype = vocab_size <= 65536 ? 2 : 4;
  h.count = ids.size();
  h.vocab_size = vocab_size;
  std::string body = shard_header_bytes(h);
  body.resize(kShardHeaderBytes + ids.size() * h.dtype);
  for (size_t i = 0; i < ids.size(); ++i) {
    SY_CHECK(ids[i] < vocab_size, path << ": id " << ids[i] << " at " << i << " is not below vocab_size " << vocab_size);
    if (h.dtype == 2) store(body, kShardHeaderBytes + 2 * i, static_cast<uint16_t>(ids[i]));
    else store(body, kShardHeaderBytes + 4 * i, ids[i]);
  }
  write_file_replacing(path, body, path + ".tmp");
}

TokenShard::TokenShard(const std::string& path, uint32_t model_vocab) : file_(path) {
  header_ = parse_shard_header(path, file_.data(), file_.size(), file_.size());
  if (header_.vocab_size > model_vocab)
    refuse(path, "vocab_size", std::to_string(header_.vocab_size),
           "the shard's ids may reach " + std::to_string(header_.vocab_size - 1) + "; must be <= model.vocab_size = " +
               std::to_string(model_vocab));
  // The header's word is not trusted for the ids themselves: one pass over them.
  for (int64_t i = 0; i < size(); ++i) {
    const uint32_t v = id(i);
    if (v >= model_vocab)
      refuse(path, "id[" + std::to_string(i) + "]", std::to_string(v),
             "must be < model.vocab_size = " + std::to_string(model_vocab) + " (and < the header's vocab_size = " +
                 std::to_string(header_.vocab_size) + ")");
    if (v >= header_.vocab_size)
      refuse(path, "id[" + std::to_string(i) + "]", std::to_string(v),
             "must be < the header's vocab_size = " + std::to_string(header_.vocab_size));
  }
}

uint32_t TokenShard::id(int64_t i) const {
  const unsigned char* p = file_.data() + kShardHeaderBytes + i * header_.dtype;
  return header_.dtype == 2 ? load<uint16_t>(p) : load<uint32_t>(p);
}

namespace {
// The first directory glob could not read and why (glob's error callback has
// no user pointer; a thread's own copy, set by the callback, read after it).
thread_local std::string glob_error_path;
thread_local int glob_error_errno = 0;
int note_glob_error(const char* path, int err) {
  glob_error_path = path;
  glob_error_errno = err;
  return 1;  // stop (GLOB_ERR)
}
}  // namespace

std::vector<std::string> expand_glob(const std::string& pattern, const std::string& field) {
  glob_t g{};
  glob_error_path.clear();
  glob_error_errno = 0;
  const int rc = ::glob(pattern.c_str(), GLOB_ERR, note_glob_error, &g);
  std::vector<std::string> out;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  const std::string where = field + " = \"" + pattern + "\": ";
  if (rc == GLOB_NOMATCH || (rc == 0 && out.empty()))
    throw ConfigError(where + "matches no file (patterns are relative to the working directory)");
  // A directory of the pattern that does not exist is no match either
  // (GLOB_ERR reports it as an error): say which.
  if (rc == GLOB_ABORTED && (glob_error_errno == ENOENT || glob_error_errno == ENOTDIR))
    throw ConfigError(where + "matches no file (directory " + glob_error_path +
                      " does not exist; patterns are relative to the working directory)");
  if (rc != 0)
    throw ConfigError(where + "cannot be expanded (directory " +
                      (glob_error_path.empty() ? std::string("?") : glob_error_path) +
                      " cannot be read: " + std::strerror(glob_error_errno) + ")");
  return out;
}

}  // namespace sy
