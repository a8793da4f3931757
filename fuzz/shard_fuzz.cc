// libFuzzer target: the token shard reader (runtime/token_shard.h) and the
// window sampler over shards (runtime/data.h), as TOKEN_FILES uses them.
//
// The input's tail (read by FuzzedDataProvider from the end) chooses the
// model's vocabulary, seq_len, batch, seed and a world size; the input's
// head is the shard file's bytes, served through a memfd so TokenShard maps
// a real path. Most inputs are refused at the header (the magic); the seed
// corpus (fuzz/corpus/shard_fuzz/) holds valid shards of both dtypes for
// the mutator to start from, so truncations, counts, vocabularies and ids
// beyond them get explored.
//
// Fine: a sy::ConfigError (a refused shard: one line). A finding: a crash, a
// sanitizer report, an exception of another type, a multi-line refusal, or
// a broken property checked below (an accepted shard whose size does not
// match its header, an id at or over the vocabulary, a window that is not
// T+1 consecutive ids of the shard, a rank's slice that differs from the
// whole batch's), which traps.
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "runtime/data.h"
#include "runtime/token_shard.h"

#define FUZZ_ASSERT(cond)                                                                           \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      std::fprintf(stderr, "shard_fuzz: %s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                             \
    }                                                                                               \
  } while (0)

namespace {

const std::string& file_with(const std::string& bytes) {
  static const int fd = memfd_create("shard_fuzz", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  FUZZ_ASSERT(fd >= 0);
  FUZZ_ASSERT(ftruncate(fd, 0) == 0);
  FUZZ_ASSERT(pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const uint32_t vocab = in.ConsumeIntegralInRange<uint32_t>(1, sy::kMaxVocab + 1);
  const int64_t T = in.ConsumeIntegralInRange<int64_t>(1, 64);
  const int world = in.ConsumeIntegralInRange<int>(1, 3);
  const int64_t B = world * in.ConsumeIntegralInRange<int64_t>(1, 3);
  const uint64_t seed = in.ConsumeIntegral<uint64_t>();
  const std::string bytes = in.ConsumeRemainingBytesAsString();
  const std::string& path = file_with(bytes);

  try {
    const sy::TokenShard shard(path, vocab);
    const sy::ShardHeader& h = shard.header();
    FUZZ_ASSERT(bytes.size() == sy::kShardHeaderBytes + h.count * h.dtype);
    FUZZ_ASSERT(h.vocab_size <= vocab);
    for (int64_t i = 0; i < shard.size(); ++i) FUZZ_ASSERT(shard.id(i) < h.vocab_size);
    // Header bytes written back are the file's header.
    FUZZ_ASSERT(sy::shard_header_bytes(h) == bytes.substr(0, sy::kShardHeaderBytes));

    sy::Split split;
    split.add(shard.ids(), shard.size(), shard.width());
    sy::WindowSampler s(split, B, T, seed);
    FUZZ_ASSERT(s.windows() == std::max<int64_t>(0, shard.size() - T));
    if (s.windows() == 0) return 0;
    for (int n = 0; n < 2; ++n) {
      const sy::Batch all = s.next();
      for (int64_t b = 0; b < B; ++b) {
        // The window's ids occur in the shard at some start: find it from the first id's run.
        bool found = false;
        for (int64_t st = 0; st + T < shard.size() && !found; ++st) {
          bool same = true;
          for (int64_t t = 0; t < T && same; ++t)
            same = static_cast<uint32_t>(all.inputs[b * T + t]) == shard.id(st + t) &&
                   static_cast<uint32_t>(all.targets[b * T + t]) == shard.id(st + t + 1);
          found = same;
        }
        FUZZ_ASSERT(found);
      }
      for (int r = 0; r < world; ++r) {
        sy::WindowSampler mine(split, B, T, seed);
        mine.set_position(static_cast<uint64_t>(n));
        FUZZ_ASSERT(mine.next(r, world).inputs == sy::slice_batch(all, T, r, world).inputs);
      }
    }
    FUZZ_ASSERT(s.fixed(1).inputs == s.fixed(1).inputs);
  } catch (const sy::ConfigError& e) {
    FUZZ_ASSERT(std::string(e.what()).find('\n') == std::string::npos);
  }
  return 0;
}
