// libFuzzer target: the checkpoint reader. Two paths, by the input's first
// byte (fuzz/checkpoint_models.h has the layout):
//
//  - one safetensors file (runtime/safetensors.h), served through a memfd:
//    the header's length, its JSON, the tensor table; then every tensor read
//    back, its CRC-32, the file's digest, and a rewrite of what was read;
//  - a checkpoint directory (runtime/checkpoint.h): the manifest and the
//    safetensors files written into a private directory, then
//    load_checkpoint into one of two tiny models: manifest, compatibility,
//    every file verified against the manifest, the tensor set, and each
//    tensor's dtype and shape against the model's parameters. With
//    kFixDigests the harness first rewrites the manifest's sizes, CRC-32s and
//    tensor tables from the files as they are (as the writer would have), so
//    mutated headers and shapes get past the checksums to the model's checks.
//
// Fine: success, or a one-line refusal: a sy::ConfigError from the reader, an
// AgreedError of exit code 2 from load_checkpoint. A finding: a crash, a
// sanitizer report, a leak, an exception of another type, a multi-line
// refusal, a single allocation of 64 MB (scripts/ci_fuzz.sh's
// -malloc_limit_mb: inputs are a few KB, so it is one not bounded by the
// file), or a broken property checked below (a tensor table that does not
// tile the file, bytes read that are not the file's, a rewrite of what was
// read that is refused, a refused load that changed the model), which traps.
//
// Mutation: a third of the mutations are structure-aware (LLVMFuzzerCustomMutator
// below: a number of a shape or data_offsets set to an edge of 64-bit
// arithmetic or near the data's size, a dimension added or removed, a dtype
// changed, the header's length rewritten); the rest are libFuzzer's own.
// Byte mutations alone did not find a planted unchecked shape product in
// 60 s (nor in 400 s of fork mode); with these, in about 10 s.
//
// Seeds: fuzz/corpus/checkpoint_fuzz/, written by checkpoint_seeds.cc;
// dictionary: checkpoint_fuzz.dict. CHECKPOINT_FUZZ_VERBOSE=1 when replaying
// an input prints what became of it.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <google/protobuf/text_format.h>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz/checkpoint_models.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/safetensors.h"
#include "runtime/startup.h"

#define FUZZ_ASSERT(cond)                                                                                \
  do {                                                                                                   \
    if (!(cond)) {                                                                                       \
      std::fprintf(stderr, "checkpoint_fuzz: %s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                                                  \
    }                                                                                                    \
  } while (0)

namespace {

namespace fs = std::filesystem;
using sy_fuzz::CheckpointFuzzFlags;

struct Memfd {
  int fd;
  std::string path;
  explicit Memfd(const char* name) : fd(memfd_create(name, 0)), path("/proc/self/fd/" + std::to_string(fd)) {
    FUZZ_ASSERT(fd >= 0);
  }
  const std::string& holding(const std::string& bytes) const {
    FUZZ_ASSERT(ftruncate(fd, 0) == 0);
    FUZZ_ASSERT(pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
    return path;
  }
  std::string contents() const {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
};

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == std::string::npos; }

// CHECKPOINT_FUZZ_VERBOSE=1 when replaying an input: what became of it.
void say(const std::string& what) {
  static const bool verbose = std::getenv("CHECKPOINT_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "checkpoint_fuzz: %s\n", what.c_str());
}

uint64_t le64(const std::string& b) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(b[i])) << (8 * i);
  return n;
}

// An accepted file: the table tiles the data region, every read returns the
// file's own bytes, and what was read writes back to the same table.
void check_accepted(const sy::SafetensorsReader& rd, const std::string& bytes) {
  FUZZ_ASSERT(rd.file_bytes() == bytes.size() && bytes.size() >= 8);
  const uint64_t data_start = 8 + le64(bytes);
  FUZZ_ASSERT(data_start <= bytes.size());
  unsigned __int128 covered = 0;
  sy::NamedTensors all;
  bool loadable = true;
  for (const sy::TensorRecord& t : rd.tensors()) {
    FUZZ_ASSERT(t.begin <= t.end && t.end <= bytes.size() - data_start);
    FUZZ_ASSERT(rd.find(t.name) != nullptr && rd.find(t.name)->begin == t.begin);
    covered += t.end - t.begin;
    const std::string own = bytes.substr(data_start + t.begin, t.end - t.begin);
    FUZZ_ASSERT(rd.crc32(t) == sy::crc32_update(0, own.data(), own.size()));
    try {
      sy::Tensor x = rd.read(t);
      FUZZ_ASSERT(x.shape() == t.shape && static_cast<uint64_t>(x.nbytes()) == own.size());
      FUZZ_ASSERT(std::string(static_cast<const char*>(x.raw()), x.nbytes()) == own);
      all.emplace_back(t.name, x);
    } catch (const sy::ConfigError& e) {  // a dtype this build does not hold
      FUZZ_ASSERT(one_line(e.what()));
      loadable = false;
    }
  }
  FUZZ_ASSERT(covered == bytes.size() - data_start);  // no hole, no overlap: reads stay within the file
  const sy::FileDigest d = rd.digest();
  FUZZ_ASSERT(d.bytes == bytes.size() && d.crc32 == sy::crc32_update(0, bytes.data(), bytes.size()));
  if (!loadable) return;
  // Written back and read again: the same tensors and metadata.
  static const Memfd again("checkpoint_fuzz_rewrite");
  std::map<std::string, std::string> meta = rd.metadata();
  sy::write_safetensors(again.holding(""), all, meta);
  std::unique_ptr<sy::SafetensorsReader> back;
  try {
    back = std::make_unique<sy::SafetensorsReader>(again.path);
  } catch (const sy::ConfigError& e) {  // the writer's own file refused
    std::fprintf(stderr, "checkpoint_fuzz: the rewritten file is refused: %s\n", e.what());
    FUZZ_ASSERT(false);
  }
  FUZZ_ASSERT(back->tensors().size() == rd.tensors().size() && back->metadata() == meta);
  for (const auto& [name, x] : all) {
    const sy::TensorRecord* r = back->find(name);
    FUZZ_ASSERT(r && r->shape == x.shape() && r->dtype == sy::safetensors_dtype(x.dtype()));
  }
}

void one_file(const std::string& bytes) {
  static const Memfd file("checkpoint_fuzz");
  try {
    const sy::SafetensorsReader rd(file.holding(bytes));
    check_accepted(rd, bytes);
    say("file accepted: " + std::to_string(rd.tensors().size()) + " tensors");
  } catch (const sy::ConfigError& e) {
    say(std::string("file refused: ") + e.what());
    FUZZ_ASSERT(one_line(e.what()));
  }
}

// A private directory for one input's files, removed when the input is done
// (libFuzzer ends a process without running exit handlers, so nothing is
// left to them).
struct WorkDir {
  std::string path;
  WorkDir() {
    const std::string base = fs::is_directory("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
    path = base + "/checkpoint_fuzz_XXXXXX";
    FUZZ_ASSERT(mkdtemp(path.data()) != nullptr);
  }
  ~WorkDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
};

// Plain names only: the harness writes nowhere but its own directory.
bool plain_name(const std::string& n) {
  if (n.empty() || n.size() > 100 || n == "." || n == "..") return false;
  for (char c : n)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

// The records of a directory input: (name, bytes) in order; empty unless the
// body starts with the file mark.
std::vector<std::pair<std::string, std::string>> split_records(const std::string& body) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::string mark = std::string("\n") + sy_fuzz::kFileMark;
  if (body.compare(0, 3, sy_fuzz::kFileMark) != 0) return out;
  for (size_t at = 3; at <= body.size();) {
    size_t next = body.find(mark, at);
    if (next == std::string::npos) next = body.size();
    const size_t nl = body.find('\n', at);
    if (nl != std::string::npos && nl <= next)
      out.emplace_back(body.substr(at, nl - at), body.substr(nl + 1, next - nl - 1));
    at = next + mark.size();
  }
  return out;
}

std::string join_records(const std::vector<std::pair<std::string, std::string>>& files) {
  std::string s;
  for (const auto& [name, bytes] : files) s += (s.empty() ? "" : "\n") + (sy_fuzz::kFileMark + name) + "\n" + bytes;
  return s;
}

// The input's files, written into dir/ck (dir/ck's siblings are the
// harness's, so a manifest that names "../x" reaches nothing else).
std::string write_files(const std::string& dir, const std::string& body) {
  const std::string ck = dir + "/ck";
  fs::create_directory(ck);
  for (const auto& [name, bytes] : split_records(body))
    if (plain_name(name)) std::ofstream(ck + "/" + name, std::ios::binary | std::ios::trunc) << bytes;
  return ck;
}

// As the writer would have listed the files: sizes, CRC-32s and tensor tables
// from the files on disk (those that parse).
void fix_digests(const std::string& ck) {
  switchyard::CheckpointManifest m;
  try {
    m = sy::read_manifest(ck);
  } catch (const sy::ConfigError&) {
    return;
  }
  for (auto& f : *m.mutable_files()) {
    if (!plain_name(f.name())) continue;
    try {
      const sy::SafetensorsReader rd(ck + "/" + f.name());
      std::vector<const sy::TensorRecord*> recs;
      for (const auto& t : rd.tensors()) recs.push_back(&t);
      std::sort(recs.begin(), recs.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
      const sy::FileDigest d = rd.digest();
      f.set_bytes(static_cast<int64_t>(d.bytes));
      f.set_crc32(d.crc32);
      f.clear_tensors();
      for (const sy::TensorRecord* r : recs) {
        auto* t = f.add_tensors();
        t->set_name(r->name);
        t->set_dtype(r->dtype);
        for (int64_t s : r->shape) t->add_shape(s);
        t->set_begin(static_cast<int64_t>(r->begin));
        t->set_end(static_cast<int64_t>(r->end));
        t->set_crc32(rd.crc32(*r));
      }
    } catch (const sy::ConfigError&) {
    }
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(m, &text);
  std::ofstream(ck + "/manifest.pbtxt", std::ios::trunc) << text;
}

struct Loaded {
  sy::Config cfg;
  std::unique_ptr<sy::Transformer> model;
};

Loaded& model_for(int which) {
  static Loaded models[2];
  Loaded& m = models[which];
  if (!m.model) {
    m.cfg = sy_fuzz::checkpoint_model_config(which);
    m.model = std::make_unique<sy::Transformer>(sy::host_ctx(), m.cfg);
  }
  return m;
}

// Every byte of the model's state that a load may change.
std::string model_state(sy::Transformer& m) {
  std::string s;
  auto add = [&](const sy::Tensor& t) { s.append(static_cast<const char*>(t.raw()), t.nbytes()); };
  for (sy::Param* p : m.params().all()) add(p->value), add(p->m), add(p->v);
  for (const sy::CentroidSetRef& c : m.centroid_sets()) {
    add(c.centroids->mu), add(c.centroids->sum), add(c.centroids->count);
    s += c.centroids->initialized ? '1' : '0';
  }
  for (const auto& [name, t] : m.balance_biases()) add(t);
  return s;
}

void directory(unsigned flags, const std::string& body) {
  const WorkDir dir;
  const std::string ck = write_files(dir.path, body);
  if (flags & CheckpointFuzzFlags::kFixDigests) fix_digests(ck);
  Loaded& l = model_for((flags & CheckpointFuzzFlags::kRouted) ? 1 : 0);
  const std::string before = model_state(*l.model);
  try {
    const sy::TrainState s = sy::load_checkpoint(ck, l.cfg, *l.model, nullptr, flags & CheckpointFuzzFlags::kOptimizer);
    const switchyard::CheckpointManifest m = sy::read_manifest(ck);
    FUZZ_ASSERT(s.step == m.step() && s.data_position == m.data_position());
    say("checkpoint loaded");
  } catch (const sy::AgreedError& e) {
    say(std::string("checkpoint refused: ") + e.what());
    FUZZ_ASSERT(e.exit_code() == 2 && one_line(e.what()));
    FUZZ_ASSERT(model_state(*l.model) == before);  // a refused checkpoint changes nothing
  }
}

// The structure-aware part of the mutator: byte mutations rarely turn a
// shape into one whose byte count overflows or leaves the file and keep the
// JSON valid, so a third of the mutations edit a header instead. A value at
// an edge of the arithmetic, or near the data's size.
uint64_t edge_value(std::mt19937_64& rng, uint64_t old, uint64_t data_bytes) {
  static const uint64_t kEdges[] = {0, 1, 2, 3, 4, 7, 8, 255, 256, 65536, (1ull << 31) - 1, 1ull << 31,
                                    (1ull << 32) - 1, 1ull << 32, (1ull << 32) + 1, 1ull << 61, 1ull << 62,
                                    (1ull << 63) - 1, 1ull << 63, ~0ull - 3, ~0ull};
  switch (rng() % 4) {
    case 0: return old + 1;
    case 1: return old - 1;
    case 2: return data_bytes + rng() % 3 - 1;
    default: return kEdges[rng() % (sizeof kEdges / sizeof kEdges[0])];
  }
}

// `file` with its safetensors header edited (a number of a shape or of
// data_offsets changed, a dimension added or removed, or a dtype changed) and
// its length prefix rewritten; empty when it has no header to edit.
std::string edit_header(const std::string& file, std::mt19937_64& rng) {
  if (file.size() < 8) return "";
  const uint64_t n = le64(file);
  if (n > file.size() - 8) return "";
  nlohmann::json h = nlohmann::json::parse(file.substr(8, n), nullptr, false);
  if (h.is_discarded() || !h.is_object()) return "";
  std::vector<nlohmann::json*> entries, arrays;  // tensors; their shapes and data_offsets
  for (auto& [name, v] : h.items()) {
    if (!v.is_object() || name == "__metadata__") continue;
    entries.push_back(&v);
    for (const char* key : {"shape", "data_offsets"})
      if (v.contains(key) && v[key].is_array()) arrays.push_back(&v[key]);
  }
  if (arrays.empty()) return "";
  const uint64_t data_bytes = file.size() - 8 - n;
  nlohmann::json& a = *arrays[rng() % arrays.size()];
  switch (rng() % 6) {
    case 0: {
      static const char* kDtypes[] = {"F32", "BF16", "F64", "I64", "U8", "BOOL", "F8_E5M2"};
      (*entries[rng() % entries.size()])["dtype"] = kDtypes[rng() % 7];
      break;
    }
    case 1: a.insert(a.begin() + static_cast<long>(rng() % (a.size() + 1)), edge_value(rng, 1, data_bytes)); break;
    case 2:
      if (a.empty()) return "";
      a.erase(a.begin() + static_cast<long>(rng() % a.size()));
      break;
    default: {
      if (a.empty()) return "";
      nlohmann::json& x = a[rng() % a.size()];
      x = edge_value(rng, x.is_number_unsigned() ? x.get<uint64_t>() : 0, data_bytes);
    }
  }
  const std::string text = h.dump();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  return out + text + file.substr(8 + n);
}

}  // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  std::mt19937_64 rng(seed);
  if (size > 1 && rng() % 3 == 0) {
    const unsigned char flags = data[0];
    const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
    std::string edited;
    if (flags & CheckpointFuzzFlags::kDirectory) {
      auto files = split_records(body);
      std::vector<size_t> st;  // the safetensors files among them
      for (size_t i = 0; i < files.size(); ++i)
        if (files[i].first.find(".safetensors") != std::string::npos) st.push_back(i);
      if (!st.empty()) {
        auto& f = files[st[rng() % st.size()]].second;
        const std::string e = edit_header(f, rng);
        if (!e.empty()) f = e, edited = join_records(files);
      }
    } else {
      edited = edit_header(body, rng);
    }
    if (!edited.empty() && edited.size() + 1 <= max_size) {
      std::memcpy(data + 1, edited.data(), edited.size());
      return edited.size() + 1;
    }
  }
  return LLVMFuzzerMutate(data, size, max_size);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const unsigned flags = data[0];
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (flags & CheckpointFuzzFlags::kDirectory)
    directory(flags, body);
  else
    one_file(body);
  return 0;
}
