// Writes checkpoint_fuzz's seed corpus (fuzz/corpus/checkpoint_fuzz/): real
// checkpoints of the two tiny models in fuzz/checkpoint_models.h, each
// trained two steps on a token shard and saved by save_checkpoint, packed in
// the fuzz input's layout; and a few broken variants (a truncated file, a
// flipped byte, a manifest from the other model, a lone safetensors file and
// its cut copy) for the mutator to start from. To keep seeds a few KB, only
// "dense_full" keeps the optimizer files; the others drop them and their
// manifest entries (what a load without the moments reads).
//   build-asan/bin/checkpoint_fuzz_seeds fuzz/corpus/checkpoint_fuzz
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <google/protobuf/text_format.h>

#include "core/error.h"
#include "runtime/checkpoint.h"
#include "fuzz/checkpoint_models.h"
#include "runtime/token_shard.h"
#include "runtime/trainer.h"

namespace fs = std::filesystem;
using Files = std::map<std::string, std::string>;

namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A checkpoint of model `which` after two training steps, as name -> bytes.
Files checkpoint_of(int which, const fs::path& tmp) {
  sy::Config cfg = sy_fuzz::checkpoint_model_config(which);
  const fs::path dir = tmp / std::to_string(which);
  fs::create_directories(dir);
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 200; ++i) ids.push_back((i * 7 + i / 5) % 5);
  sy::write_token_shard((dir / "train.bin").string(), ids, 5);
  sy::write_token_shard((dir / "val.bin").string(), ids, 5);
  cfg.mutable_data()->set_token_files((dir / "train.bin").string());
  cfg.mutable_data()->set_val_token_files((dir / "val.bin").string());
  cfg.mutable_train()->set_checkpoint_dir((dir / "ck").string());
  sy::validate_config(cfg, "checkpoint_seeds");
  sy::Trainer t(cfg, {});
  t.step(1);
  t.step(2);
  Files out;
  for (const auto& e : fs::directory_iterator(t.write_checkpoint())) out[e.path().filename()] = read_bytes(e.path());
  return out;
}

// The checkpoint without its optimizer files, in the files and the manifest.
Files without_optimizer(Files files, const fs::path& tmp) {
  const fs::path dir = tmp / "strip";
  fs::create_directories(dir);
  std::ofstream(dir / "manifest.pbtxt") << files.at("manifest.pbtxt");
  switchyard::CheckpointManifest m = sy::read_manifest(dir.string());
  switchyard::CheckpointManifest kept = m;
  kept.clear_files();
  for (const auto& f : m.files()) {
    if (f.name().rfind("optim-", 0) == 0) files.erase(f.name());
    else *kept.add_files() = f;
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(kept, &text);
  files["manifest.pbtxt"] = text;
  return files;
}

std::string pack(unsigned flags, const Files& files) {
  std::string s(1, static_cast<char>(flags));
  bool first = true;
  for (const auto& [name, bytes] : files) {
    if (!first) s += '\n';
    first = false;
    // The layout cannot hold a file that contains the separator.
    SY_CHECK(bytes.find(std::string("\n") + sy_fuzz::kFileMark) == std::string::npos, name << " holds the separator");
    s += sy_fuzz::kFileMark + name + "\n" + bytes;
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: checkpoint_fuzz_seeds OUT_DIR\n";
    return 2;
  }
  const fs::path out = argv[1], tmp = fs::temp_directory_path() / "checkpoint_fuzz_seeds";
  fs::remove_all(tmp);
  fs::create_directories(out);
  using namespace sy_fuzz;
  const Files dense_full = checkpoint_of(0, tmp), routed_full = checkpoint_of(1, tmp);
  const Files dense = without_optimizer(dense_full, tmp), routed = without_optimizer(routed_full, tmp);
  std::map<std::string, std::string> seeds;
  seeds["dense_full"] = pack(kDirectory | kOptimizer, dense_full);
  seeds["dense"] = pack(kDirectory, dense);
  seeds["routed"] = pack(kDirectory | kRouted | kFixDigests, routed);
  Files cut = dense;
  cut["model-dense.safetensors"].resize(cut["model-dense.safetensors"].size() - 9);
  seeds["dense_truncated"] = pack(kDirectory, cut);
  Files flipped = dense;
  std::string& m = flipped["model-dense.safetensors"];
  m[m.find("F32")] ^= 0x20;  // "f32": a dtype the model does not take
  seeds["dense_flipped"] = pack(kDirectory | kFixDigests, flipped);
  // Consistent files that the model refuses: past the checksums (the harness
  // rewrites them) to the tensor set and the shape checks.
  seeds["dense_fixed"] = pack(kDirectory | kFixDigests, dense);
  Files renamed = dense;
  std::string& r = renamed["model-dense.safetensors"];
  r.replace(r.find("\"wte\""), 5, "\"wtf\"");  // not a tensor of this model
  seeds["dense_renamed"] = pack(kDirectory | kFixDigests, renamed);
  Files transposed = dense;
  std::string& t = transposed["model-dense.safetensors"];
  const size_t fc1 = t.find("\"shape\":[8,4]", t.find("\"h0.mlp.fc1.w\""));
  t.replace(fc1, 13, "\"shape\":[4,8]");  // the same bytes, another shape
  seeds["dense_transposed"] = pack(kDirectory | kFixDigests, transposed);
  Files foreign = dense;
  foreign["manifest.pbtxt"] = routed.at("manifest.pbtxt");
  seeds["dense_foreign_manifest"] = pack(kDirectory | kFixDigests, foreign);
  const std::string model = dense.at("model-dense.safetensors");
  seeds["file"] = std::string(1, '\0') + model;
  seeds["file_truncated"] = std::string(1, '\0') + model.substr(0, model.size() / 2);
  seeds["file_metadata"] = std::string(1, '\0') + routed_full.at("optim-experts-00000-of-00001.safetensors");
  for (const auto& [name, bytes] : seeds) {
    std::ofstream(out / name, std::ios::binary | std::ios::trunc) << bytes;
    std::cout << name << ": " << bytes.size() << " bytes\n";
  }
  fs::remove_all(tmp);
  return 0;
}
