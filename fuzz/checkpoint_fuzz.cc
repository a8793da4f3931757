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
#include <filesystem>
#include <fstream>
#include <google/protobuf/text_format.h>
#include <map>
#include <memory>
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

// A private directory for the checkpoint's files, emptied for each input.
// (Never destroyed: the atexit handler that removes it runs after static
// destructors registered later.)
const std::string& work_dir() {
  static const std::string* dir = [] {
    std::string base = fs::is_directory("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
    auto* tmpl = new std::string(base + "/checkpoint_fuzz_XXXXXX");
    FUZZ_ASSERT(mkdtemp(tmpl->data()) != nullptr);
    std::atexit([] { fs::remove_all(work_dir()); });
    return tmpl;
  }();
  return *dir;
}

// Plain names only: the harness writes nowhere but its own directory.
bool plain_name(const std::string& n) {
  if (n.empty() || n.size() > 100 || n == "." || n == "..") return false;
  for (char c : n)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

// The input's files, written into dir/ck (dir/ck's siblings are the
// harness's, so a manifest that names "../x" reaches nothing else).
std::string write_files(const std::string& body) {
  const std::string ck = work_dir() + "/ck";
  fs::remove_all(ck);
  fs::create_directory(ck);
  const std::string mark = std::string("\n") + sy_fuzz::kFileMark;
  if (body.compare(0, 3, sy_fuzz::kFileMark) != 0) return ck;
  for (size_t at = 3; at <= body.size();) {
    size_t next = body.find(mark, at);
    if (next == std::string::npos) next = body.size();
    const size_t nl = body.find('\n', at);
    if (nl != std::string::npos && nl <= next) {
      const std::string name = body.substr(at, nl - at);
      if (plain_name(name)) {
        std::ofstream out(ck + "/" + name, std::ios::binary | std::ios::trunc);
        out.write(body.data() + nl + 1, static_cast<std::streamsize>(next - nl - 1));
      }
    }
    at = next + mark.size();
  }
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
  const std::string ck = write_files(body);
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

}  // namespace

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
