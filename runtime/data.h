// Training data: a byte corpus (built-in synthetic multi-task text, or a
// file's bytes) split into train and validation tails, or token shards
// (runtime/token_shard.h); and a sampler of windows over either.
//
// Synthetic corpus: a stream of examples, each a line that opens with its
// task's prefix byte:
//   C  long-range copy:  "C" key ":" "." * gap "?" key "\n"
//                        key: 6-10 lowercase letters, gap 16-96 dots (by default); the key
//                        must be recalled across the gap.
//   S  sort digits:      "S" digits ">" sorted(digits) "\n"      (3-8 digits)
//   B  brackets:         "B" balanced sequence over ()[]{} "\n"  (4-16 bytes)
//   A  addition:         "A" a "+" b "=" a+b "\n"               (a, b < 10^4)
// Everything is drawn from Rng(seed), so the corpus is a function of the seed.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/philox.h"
#include "core/rng.h"

namespace sy {

struct SyntheticSpec {
  std::string tasks = "CSBA";  // prefix bytes of the tasks to draw from
  int gap_min = 16, gap_max = 96;  // copy task filler length
};
std::string synthetic_corpus(uint64_t seed, int64_t n_bytes, const SyntheticSpec& spec = {});
// One example of `task` in {'C','S','B','A'}.
std::string synthetic_example(char task, Rng& rng, const SyntheticSpec& spec = {});
std::string read_file_bytes(const std::string& path);

struct Batch {
  std::vector<int32_t> inputs;   // (B*T) token ids (bytes for byte-level data)
  std::vector<int32_t> targets;  // (B*T) the next id of each input
};

// Sequences [rank*B/world, (rank+1)*B/world) of a batch of B sequences of T:
// a data-parallel rank's slice of the global batch.
Batch slice_batch(const Batch& b, int64_t T, int rank, int world);

// One split of the data as runs of token ids in memory that windows never
// cross: a byte corpus is one run of 1-byte ids, token shards (data source
// TOKEN_FILES) one run of 2- or 4-byte ids each. The split views the memory;
// its owner (a string, a mapped shard) must outlive it.
class Split {
 public:
  struct Run {
    const void* ids = nullptr;
    int64_t n = 0;
    int width = 1;  // bytes per id: 1, 2 or 4
  };
  Split() = default;
  static Split of_bytes(const std::string& bytes);
  void add(const void* ids, int64_t n, int width);
  const std::vector<Run>& runs() const { return runs_; }
  int64_t tokens() const;
  int32_t id(size_t run, int64_t i) const;
  // How many times each id in [0, V) occurs (moe.hash_assignment BALANCED's
  // counts); an id >= V is an error.
  std::vector<int64_t> counts(int64_t V) const;

 private:
  std::vector<Run> runs_;
};

// Samples B windows of T+1 consecutive ids from one split: at random
// (training) or at evenly spaced fixed places (evaluation, the same every
// time). A run of n ids holds n - T window starts; the split's W starts are
// numbered run after run, so one number in [0, W) names a window, and every
// window is equally likely whatever the runs' lengths.
// Training draws are counter-based (core/philox.h): window b of batch n is
// number bits_below(philox(seed; b, n, data stream), W), a function of
// (seed, n, b) alone, so the sampler's whole state is n (position()), which
// a checkpoint stores and a resume restores. Evaluation window i of batch idx
// is number floor(frac((idx*B + i) * 0.618...) * W) (a golden-ratio stride).
// A data-parallel rank draws only its own windows, b in
// [rank*B/world, (rank+1)*B/world): the same ones it would slice out of the
// whole batch, so the stream does not depend on the world size.
class WindowSampler {
 public:
  WindowSampler(Split split, int64_t B, int64_t T, uint64_t seed);
  WindowSampler(const std::string* bytes, int64_t B, int64_t T, uint64_t seed);
  Batch next(int rank = 0, int world = 1);  // random windows; advances the sampler
  Batch fixed(int64_t idx, int rank = 0, int world = 1);  // the idx-th evaluation batch
  uint64_t position() const { return drawn_; }  // batches drawn so far
  void set_position(uint64_t n) { drawn_ = n; }
  int64_t windows() const { return starts_.empty() ? 0 : starts_.back(); }  // W
  // Window number w's run and the offset of its first id there.
  std::pair<size_t, int64_t> locate(int64_t w) const;

 private:
  Batch at(const std::vector<int64_t>& numbers) const;
  Split split_;
  std::vector<int64_t> starts_;  // starts_[r]: window starts in runs [0, r]
  int64_t B_, T_;
  uint64_t seed_;
  uint64_t drawn_ = 0;
};

// A corpus split into its head (train) and tail (val).
struct Dataset {
  std::string train, val;
};
// `source` names where the corpus came from in a refusal (e.g.
// "data.path = x.txt").
Dataset make_dataset(const std::string& corpus, double val_fraction, int64_t seq_len,
                     const std::string& source = "data");

}  // namespace sy
