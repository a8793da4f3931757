#include "runtime/data.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/file.h"

namespace sy {

namespace {

std::string digits(Rng& r, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += static_cast<char>('0' + r.below(10));
  return s;
}

std::string brackets(Rng& r, int len) {
  static const char open[] = "([{", close[] = ")]}";
  std::string s, stack;
  while (static_cast<int>(s.size()) < len) {
    int remaining = len - static_cast<int>(s.size());
    // Open while there is room to close everything afterwards.
    bool can_open = static_cast<int>(stack.size()) + 2 <= remaining;
    if (!stack.empty() && (!can_open || r.below(2))) {
      s += stack.back();
      stack.pop_back();
    } else {
      int k = static_cast<int>(r.below(3));
      s += open[k];
      stack += close[k];
    }
  }
  return s;
}

}  // namespace

std::string synthetic_example(char task, Rng& r, const SyntheticSpec& spec) {
  switch (task) {
    case 'C': {
      std::string key;
      int n = static_cast<int>(r.between(6, 10));
      for (int i = 0; i < n; ++i) key += static_cast<char>('a' + r.below(26));
      return "C" + key + ":" + std::string(r.between(spec.gap_min, spec.gap_max), '.') + "?" + key + "\n";
    }
    case 'S': {
      std::string d = digits(r, static_cast<int>(r.between(3, 8)));
      std::string s = d;
      std::sort(s.begin(), s.end());
      return "S" + d + ">" + s + "\n";
    }
    case 'B':
      return "B" + brackets(r, 2 * static_cast<int>(r.between(2, 8))) + "\n";
    case 'A': {
      int64_t a = r.between(0, 9999), b = r.between(0, 9999);
      return "A" + std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(a + b) + "\n";
    }
  }
  throw Error(std::string("unknown synthetic task '") + task + "'");
}

std::string synthetic_corpus(uint64_t seed, int64_t n_bytes, const SyntheticSpec& spec) {
  Rng r(seed ^ 0x5EEDC0DEull);
  const std::string& tasks = spec.tasks;
  std::string out;
  out.reserve(n_bytes + 128);
  while (static_cast<int64_t>(out.size()) < n_bytes)
    out += synthetic_example(tasks[r.below(tasks.size())], r, spec);
  out.resize(n_bytes);
  return out;
}

std::string read_file_bytes(const std::string& path) { return read_whole_file(path, "data file"); }

Dataset make_dataset(const std::string& corpus, double val_fraction, int64_t seq_len, const std::string& source) {
  const int64_t n = static_cast<int64_t>(corpus.size());
  const int64_t n_val = static_cast<int64_t>(n * val_fraction);
  Dataset d{corpus.substr(0, n - n_val), corpus.substr(n - n_val)};
  const int64_t need = 2 * (seq_len + 1);
  if (static_cast<int64_t>(d.val.size()) < need || static_cast<int64_t>(d.train.size()) < need)
    throw ConfigError(source + ": a corpus of " + std::to_string(n) + " bytes is too small for model.seq_len " +
                      std::to_string(seq_len) + " with data.val_fraction " + std::to_string(val_fraction) +
                      " (each split needs at least " + std::to_string(need) + " bytes)");
  return d;
}

Batch slice_batch(const Batch& b, int64_t T, int rank, int world) {
  const int64_t B = static_cast<int64_t>(b.inputs.size()) / T;
  SY_CHECK(B % world == 0, "batch of " << B << " sequences over " << world << " ranks");
  const int64_t per = B / world, begin = rank * per * T, end = begin + per * T;
  return {std::vector<int32_t>(b.inputs.begin() + begin, b.inputs.begin() + end),
          std::vector<int32_t>(b.targets.begin() + begin, b.targets.begin() + end)};
}

Split Split::of_bytes(const std::string& bytes) {
  Split s;
  s.add(bytes.data(), static_cast<int64_t>(bytes.size()), 1);
  return s;
}

void Split::add(const void* ids, int64_t n, int width) {
  SY_CHECK(width == 1 || width == 2 || width == 4, "token width " << width);
  runs_.push_back({ids, n, width});
}

int64_t Split::tokens() const {
  int64_t n = 0;
  for (const Run& r : runs_) n += r.n;
  return n;
}

std::vector<int64_t> Split::counts(int64_t V) const {
  std::vector<int64_t> n(V, 0);
  for (size_t r = 0; r < runs_.size(); ++r)
    for (int64_t i = 0; i < runs_[r].n; ++i) {
      const int32_t t = id(r, i);
      SY_CHECK(t >= 0 && t < V, "token id " << t << " in the data, outside a vocabulary of " << V);
      ++n[t];
    }
  return n;
}

int32_t Split::id(size_t run, int64_t i) const {
  const Run& r = runs_[run];
  const auto* p = static_cast<const unsigned char*>(r.ids) + i * r.width;
  if (r.width == 1) return *p;
  if (r.width == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, p, 4);
  return static_cast<int32_t>(v);  // ids are below model.vocab_size <= 2^20
}

WindowSampler::WindowSampler(Split split, int64_t B, int64_t T, uint64_t seed)
    : split_(std::move(split)), B_(B), T_(T), seed_(seed) {
  int64_t total = 0;
  for (const Split::Run& r : split_.runs()) {
    total += std::max<int64_t>(0, r.n - T);
    starts_.push_back(total);
  }
}

WindowSampler::WindowSampler(const std::string* bytes, int64_t B, int64_t T, uint64_t seed)
    : WindowSampler(Split::of_bytes(*bytes), B, T, seed) {}

std::pair<size_t, int64_t> WindowSampler::locate(int64_t w) const {
  SY_CHECK(w >= 0 && w < windows(), "window " << w << " of " << windows());
  const size_t r = std::upper_bound(starts_.begin(), starts_.end(), w) - starts_.begin();
  return {r, w - (r == 0 ? 0 : starts_[r - 1])};
}

Batch WindowSampler::at(const std::vector<int64_t>& numbers) const {
  const int64_t n = static_cast<int64_t>(numbers.size());
  Batch b;
  b.inputs.resize(n * T_);
  b.targets.resize(n * T_);
  for (int64_t i = 0; i < n; ++i) {
    const auto [run, off] = locate(numbers[i]);
    for (int64_t t = 0; t < T_; ++t) {
      b.inputs[i * T_ + t] = split_.id(run, off + t);
      b.targets[i * T_ + t] = split_.id(run, off + t + 1);
    }
  }
  return b;
}

namespace {
// Window indices [begin, end) of rank's slice of B windows.
std::pair<int64_t, int64_t> rank_windows(int64_t B, int rank, int world) {
  SY_CHECK(world >= 1 && rank >= 0 && rank < world && B % world == 0,
           "batch of " << B << " sequences over " << world << " ranks (rank " << rank << ")");
  const int64_t per = B / world;
  return {rank * per, (rank + 1) * per};
}
}  // namespace

Batch WindowSampler::next(int rank, int world) {
  const auto [begin, end] = rank_windows(B_, rank, world);
  SY_CHECK(windows() > 0, "no window of " << T_ + 1 << " ids in a split of " << split_.tokens());
  std::vector<int64_t> num;
  const RandomKey key{seed_, random_stream(RandomPurpose::data), static_cast<uint32_t>(drawn_), 0};
  for (int64_t b = begin; b < end; ++b) {
    const Philox4 w = random_bits(key, static_cast<uint64_t>(b));
    num.push_back(static_cast<int64_t>(bits_below(w.v[0], w.v[1], static_cast<uint64_t>(windows()))));
  }
  ++drawn_;
  return at(num);
}

Batch WindowSampler::fixed(int64_t idx, int rank, int world) {
  const auto [begin, end] = rank_windows(B_, rank, world);
  SY_CHECK(windows() > 0, "no window of " << T_ + 1 << " ids in a split of " << split_.tokens());
  std::vector<int64_t> num;
  // Golden-ratio stride: evaluation windows spread over the whole split.
  for (int64_t i = begin; i < end; ++i)
    num.push_back(static_cast<int64_t>(std::fmod((idx * B_ + i) * 0.6180339887498949, 1.0) * windows()));
  return at(num);
}

}  // namespace sy
