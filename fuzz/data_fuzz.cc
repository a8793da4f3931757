// libFuzzer target: the data loaders (runtime/data.h) as the trainer uses
// them.
//
// The input's tail (read by FuzzedDataProvider from the end) chooses a data
// config: the source (a text file or the synthetic corpus), val_fraction,
// seq_len, batch, seed, the synthetic tasks and copy gaps, and a world size;
// validate_config decides, as at load, whether a user could run it. The
// input's head is the text file's bytes, served through a memfd so that
// read_file_bytes opens a real path. Then the trainer's steps: the corpus,
// make_dataset's split, training windows (next) and evaluation windows
// (fixed), each sliced over the data-parallel ranks.
//
// Fine: a sy::ConfigError / sy::Error (a typed rejection: bad config, a file
// too small for seq_len). A finding: a crash, a sanitizer report, a leak, an
// exception of another type, or a broken loader property checked below
// (a file read back differently, a corpus of the wrong size or grammar, a
// window whose targets are not its inputs shifted by one byte), which traps.
//
// Sizes are kept small (seq_len <= 300, batch <= 8, synthetic corpus <= 30000
// bytes) so an input runs in well under a millisecond; refusing sizes that do
// not fit in memory is the config check's job, not the loaders'.
//
// Token shards have their own target (shard_fuzz.cc), and so have
// checkpoints (checkpoint_fuzz.cc: safetensors files and checkpoint
// directories).
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "runtime/config.h"
#include "runtime/data.h"

// A loader property that must hold: print it and trap, so libFuzzer saves the input.
#define FUZZ_ASSERT(cond)                                                                          \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::fprintf(stderr, "data_fuzz: %s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                            \
    }                                                                                              \
  } while (0)

namespace {

// One memfd for the process: the text file's bytes, at a path a loader opens.
const std::string& file_with(const std::string& bytes) {
  static const int fd = memfd_create("data_fuzz", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  FUZZ_ASSERT(fd >= 0);
  FUZZ_ASSERT(ftruncate(fd, 0) == 0);
  FUZZ_ASSERT(pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
  return path;
}

bool is_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Every complete line of a synthetic corpus is one example of a chosen task,
// correct as data.h states it (the last line may be cut at n_bytes).
void check_synthetic(const std::string& corpus, const sy::SyntheticSpec& spec) {
  size_t start = 0;
  for (size_t end; (end = corpus.find('\n', start)) != std::string::npos; start = end + 1) {
    const std::string line = corpus.substr(start, end - start);
    FUZZ_ASSERT(!line.empty() && spec.tasks.find(line[0]) != std::string::npos);
    const std::string body = line.substr(1);
    switch (line[0]) {
      case 'C': {  // key ":" dots "?" key
        const size_t colon = body.find(':'), q = body.find('?');
        FUZZ_ASSERT(colon != std::string::npos && q != std::string::npos && colon < q);
        const std::string key = body.substr(0, colon), gap = body.substr(colon + 1, q - colon - 1);
        FUZZ_ASSERT(key.size() >= 6 && key.size() <= 10 && body.substr(q + 1) == key);
        FUZZ_ASSERT(static_cast<int>(gap.size()) >= spec.gap_min && static_cast<int>(gap.size()) <= spec.gap_max);
        FUZZ_ASSERT(gap.find_first_not_of('.') == std::string::npos);
        break;
      }
      case 'S': {  // digits ">" sorted digits
        const size_t gt = body.find('>');
        FUZZ_ASSERT(gt != std::string::npos);
        std::string in = body.substr(0, gt);
        FUZZ_ASSERT(is_digits(in) && in.size() >= 3 && in.size() <= 8);
        std::sort(in.begin(), in.end());
        FUZZ_ASSERT(body.substr(gt + 1) == in);
        break;
      }
      case 'B': {  // balanced brackets, even length 4-16
        std::string stack;
        FUZZ_ASSERT(body.size() >= 4 && body.size() <= 16);
        for (char c : body) {
          const size_t o = std::string("([{").find(c), k = std::string(")]}").find(c);
          if (o != std::string::npos) {
            stack += ")]}"[o];
          } else {
            FUZZ_ASSERT(k != std::string::npos && !stack.empty() && stack.back() == c);
            stack.pop_back();
          }
        }
        FUZZ_ASSERT(stack.empty());
        break;
      }
      case 'A': {  // a "+" b "=" a+b
        const size_t plus = body.find('+'), eq = body.find('=');
        FUZZ_ASSERT(plus != std::string::npos && eq != std::string::npos && plus < eq);
        const std::string a = body.substr(0, plus), b = body.substr(plus + 1, eq - plus - 1), s = body.substr(eq + 1);
        FUZZ_ASSERT(is_digits(a) && is_digits(b) && is_digits(s) && a.size() <= 4 && b.size() <= 4);
        FUZZ_ASSERT(std::stol(a) + std::stol(b) == std::stol(s));
        break;
      }
      default:
        FUZZ_ASSERT(false);
    }
  }
}

// Each window is T+1 consecutive bytes of `split`: targets are the inputs
// shifted by one, and the window occurs in the split.
void check_batch(const sy::Batch& b, const std::string& split, int64_t B, int64_t T) {
  FUZZ_ASSERT(static_cast<int64_t>(b.inputs.size()) == B * T && b.targets.size() == b.inputs.size());
  for (int64_t i = 0; i < B; ++i) {
    std::string w(T + 1, '\0');
    for (int64_t t = 0; t < T; ++t) {
      FUZZ_ASSERT(b.inputs[i * T + t] >= 0 && b.inputs[i * T + t] < 256);
      if (t + 1 < T) FUZZ_ASSERT(b.targets[i * T + t] == b.inputs[i * T + t + 1]);
      w[t] = static_cast<char>(b.inputs[i * T + t]);
    }
    w[T] = static_cast<char>(b.targets[i * T + T - 1]);
    FUZZ_ASSERT(split.find(w) != std::string::npos);
  }
}

// A data-parallel rank's slice is its run of whole sequences.
void check_slices(const sy::Batch& b, int64_t T, int world) {
  size_t at = 0;
  for (int r = 0; r < world; ++r) {
    const sy::Batch s = sy::slice_batch(b, T, r, world);
    FUZZ_ASSERT(s.inputs.size() == b.inputs.size() / world);
    FUZZ_ASSERT(std::equal(s.inputs.begin(), s.inputs.end(), b.inputs.begin() + at));
    FUZZ_ASSERT(std::equal(s.targets.begin(), s.targets.end(), b.targets.begin() + at));
    at += s.inputs.size();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  sy::Config cfg;
  auto& d = *cfg.mutable_data();
  const bool text = in.ConsumeBool();
  d.set_source(text ? switchyard::DataConfig::TEXT_FILE : switchyard::DataConfig::SYNTHETIC);
  d.set_val_fraction(in.ConsumeFloatingPointInRange<float>(-0.1f, 0.6f));
  cfg.mutable_model()->set_seq_len(in.ConsumeIntegralInRange<int32_t>(0, 300));
  cfg.mutable_train()->set_batch(in.ConsumeIntegralInRange<int32_t>(0, 8));
  cfg.mutable_train()->set_seed(in.ConsumeIntegral<uint64_t>());
  const int world = in.ConsumeIntegralInRange<int>(1, 4);
  const int eval_batches = in.ConsumeIntegralInRange<int>(1, 3);
  if (!text) {
    d.set_synthetic_bytes(in.ConsumeIntegralInRange<int64_t>(9000, 30000));
    d.set_synthetic_tasks(in.ConsumeRandomLengthString(6));
    d.set_copy_gap_min(in.ConsumeIntegralInRange<int32_t>(0, 2000));
    d.set_copy_gap_max(in.ConsumeIntegralInRange<int32_t>(0, 2000));
  }
  const std::string bytes = in.ConsumeRemainingBytesAsString();
  if (text) d.set_path(file_with(bytes));

  try {
    sy::validate_config(cfg, "fuzz.pbtxt");
    // As the trainer builds its corpus (runtime/trainer.cc, corpus_for).
    std::string corpus;
    if (text) {
      corpus = sy::read_file_bytes(d.path());
      FUZZ_ASSERT(corpus == bytes);
    } else {
      const sy::SyntheticSpec spec{d.synthetic_tasks(), d.copy_gap_min(), d.copy_gap_max()};
      corpus = sy::synthetic_corpus(cfg.train().seed(), d.synthetic_bytes(), spec);
      FUZZ_ASSERT(static_cast<int64_t>(corpus.size()) == d.synthetic_bytes());
      check_synthetic(corpus, spec);
    }
    const int64_t T = cfg.model().seq_len(), B = cfg.train().batch();
    const sy::Dataset ds = sy::make_dataset(corpus, d.val_fraction(), T);
    FUZZ_ASSERT(ds.train + ds.val == corpus);
    sy::WindowSampler train(&ds.train, B, T, cfg.train().seed() + 1), val(&ds.val, B, T, 0);
    for (int i = 0; i < 2; ++i) {
      const sy::Batch b = train.next();
      check_batch(b, ds.train, B, T);
      if (B % world == 0) check_slices(b, T, world);
    }
    for (int i = 0; i < eval_batches; ++i) {
      const sy::Batch b = val.fixed(i);
      check_batch(b, ds.val, B, T);
      FUZZ_ASSERT(b.inputs == val.fixed(i).inputs);  // evaluation windows are fixed
    }
  } catch (const sy::Error&) {  // ConfigError and the other typed rejections
  }
  // An unknown task byte is a typed error, never a crash.
  if (size > 0) {
    sy::Rng r(size);
    try {
      sy::synthetic_example(static_cast<char>(data[0]), r);
    } catch (const sy::Error&) {
    }
  }
  return 0;
}
