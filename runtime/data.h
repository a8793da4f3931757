// Byte-level data: a corpus (built-in synthetic multi-task text, or a file's
// bytes) split into train and validation tails, and a sampler of windows.
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
  std::vector<int32_t> inputs;   // (B*T) bytes
  std::vector<int32_t> targets;  // (B*T) the next byte of each input
};

// Sequences [rank*B/world, (rank+1)*B/world) of a batch of B sequences of T:
// a data-parallel rank's slice of the global batch.
Batch slice_batch(const Batch& b, int64_t T, int rank, int world);

// Samples B windows of T+1 bytes from one split: at random offsets (training)
// or at evenly spaced fixed offsets (evaluation, the same every time).
// Training offsets are counter-based draws (core/philox.h): window b of batch
// n starts at a function of (seed, n, b) alone, so the sampler's whole state
// is n (position()), which a checkpoint stores and a resume restores.
class WindowSampler {
 public:
  WindowSampler(const std::string* bytes, int64_t B, int64_t T, uint64_t seed);
  Batch next();              // random windows; advances the sampler
  Batch fixed(int64_t idx);  // the idx-th evaluation batch (deterministic)
  uint64_t position() const { return drawn_; }  // batches drawn so far
  void set_position(uint64_t n) { drawn_ = n; }

 private:
  Batch at(const std::vector<int64_t>& offsets) const;
  const std::string* bytes_;
  int64_t B_, T_;
  uint64_t seed_;
  uint64_t drawn_ = 0;
};

// A corpus split into its head (train) and tail (val).
struct Dataset {
  std::string train, val;
};
Dataset make_dataset(const std::string& corpus, double val_fraction, int64_t seq_len);

}  // namespace sy
