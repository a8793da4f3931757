// Checkpoints in one process: the safetensors format (byte layout, CRC-32,
// broken files), the store (publish, latest, keep K), a save/load round trip
// of every kind of state (dense and expert parameters, moments, centroids,
// balancing biases, counters) that then trains on bit for bit, expert rows
// under global names, refusals of corrupt, partial or foreign checkpoints that
// leave the model and the directory untouched, and the non-finite policy.
#include <gtest/gtest.h>

#include <sstream>
#include <sys/resource.h>

#include <csignal>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "config_error.h"
#include "core/file.h"
#include "temp_dir.h"
#include "ops/finite.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Every kind of routing state: MoE (with balancing biases) in both blocks,
// routed attention with its own centroids, depth routing on block 1.
Config routed_config(const std::string& root, int n_layers = 2, int d_model = 16) {
  Config c = parse_config(R"(
    model { n_heads: 2 ffn_hidden: 24 seq_len: 16 }
    train { batch: 4 steps: 6 warmup_steps: 1 eval_batches: 1 seed: 5 }
    data { synthetic_bytes: 10000 }
    moe { num_experts: 4 every_n_layers: 1 bias_balance_rate: 0.01 jitter: 0.01 router_noise: 0.3 }
    attention { kind: ROUTED num_routing_heads: 1 window: 4 }
    depth { every_n_layers: 2 capacity: 0.5 }
  )", "test");
  c.mutable_model()->set_n_layers(n_layers);
  c.mutable_model()->set_d_model(d_model);
  c.mutable_train()->set_checkpoint_dir(root);
  validate_config(c, "test");
  return c;
}

// Every byte of the model's state: parameters, moments, centroids, biases.
std::string model_state(Transformer& m) {
  std::string s;
  auto add = [&](const Tensor& t) { s.append(static_cast<const char*>(t.raw()), t.nbytes()); };
  for (Param* p : m.params().all()) add(p->value), add(p->m), add(p->v);
  for (const CentroidSetRef& c : m.centroid_sets()) {
    add(c.centroids->mu), add(c.centroids->sum), add(c.centroids->count);
    s += c.centroids->initialized ? '1' : '0';
  }
  for (const auto& [name, t] : m.balance_biases()) add(t);
  return s;
}

std::string dir_state(const std::string& dir) {
  std::string s;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    s += e.path().string() + (e.is_regular_file() ? ":" + read_bytes(e.path().string()) : "") + "\n";
  return s;
}

TEST(Safetensors, Crc32KnownAnswer) {
  const char* s = "123456789";
  EXPECT_EQ(crc32_update(0, s, 9), 0xCBF43926u);  // the CRC-32 check value
  EXPECT_EQ(crc32_update(crc32_update(0, s, 4), s + 4, 5), 0xCBF43926u);
}

TEST(Safetensors, LayoutIsTheSpecs) {
  TempDir d;
  const std::string path = d / "a.safetensors";
  Tensor a = Tensor::from_host<float>({1.f, -2.f, 3.5f, 0.f, 5.f, 6.f}, {2, 3});
  Tensor b = Tensor::from_host<int32_t>({7, -8, 9});
  const FileDigest dg = write_safetensors(path, {{"a", a}, {"b", b}}, {{"k", "v"}});
  const std::string bytes = read_bytes(path);
  ASSERT_EQ(dg.bytes, bytes.size());
  EXPECT_EQ(dg.crc32, crc32_update(0, bytes.data(), bytes.size()));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u) << "the data starts 8-byte aligned";
  const auto h = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(h["a"]["dtype"], "F32");
  EXPECT_EQ(h["a"]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(h["a"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(h["b"]["dtype"], "I32");
  EXPECT_EQ(h["b"]["data_offsets"], nlohmann::json({24, 36}));
  EXPECT_EQ(h["__metadata__"]["k"], "v");
  ASSERT_EQ(bytes.size(), 8 + n + 36);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + n, a.raw(), 24), 0) << "raw little-endian f32";
  ASSERT_EQ(dg.tensor_crc32.size(), 2u);
  EXPECT_EQ(dg.tensor_crc32[1], crc32_update(0, b.raw(), 12));

  SafetensorsReader rd(path);
  EXPECT_EQ(rd.metadata().at("k"), "v");
  const Tensor back = rd.read(*rd.find("a"));
  EXPECT_EQ(back.shape(), a.shape());
  EXPECT_EQ(std::memcmp(back.raw(), a.raw(), 24), 0);
  EXPECT_EQ(rd.crc32(*rd.find("b")), dg.tensor_crc32[1]);
}

TEST(Safetensors, BrokenFilesNameFileAndTensor) {
  TempDir d;
  const std::string path = d / "a.safetensors";
  write_safetensors(path, {{"first", Tensor::zeros({4}, DType::f32, host_ctx())},
                           {"last", Tensor::zeros({8}, DType::f32, host_ctx())}});
  const std::string good = read_bytes(path);
  auto error_of = [&](const std::string& bytes) -> std::string {
    write_bytes(path, bytes);
    try {
      SafetensorsReader r(path);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error_of(good.substr(0, good.size() - 4)).find("truncated"), std::string::npos);
  EXPECT_NE(error_of(good.substr(0, good.size() - 4)).find("last tensor last"), std::string::npos);
  EXPECT_NE(error_of(good + "xx").find("trailing bytes"), std::string::npos);
  EXPECT_NE(error_of(good.substr(0, 5)).find("truncated"), std::string::npos);
  std::string hole = good;
  hole.replace(hole.find("[0,16]"), 6, "[4,20]");
  const std::string e = error_of(hole);
  EXPECT_NE(e.find("tensor first"), std::string::npos) << e;
  EXPECT_EQ(e.rfind(path, 0), 0u) << e;
  std::string dtype = good;
  dtype.replace(dtype.find("F32"), 3, "I32");
  EXPECT_EQ(error_of(dtype), "") << "a consistent header with another dtype is still a valid file";
}

// A safetensors file from a header and data bytes, as a hostile writer makes it.
std::string raw_safetensors(const nlohmann::json& header, const std::string& data) {
  const std::string text = header.dump();
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  return len + text + data;
}

// The refusal of `bytes` as a safetensors file ("" when it is accepted).
std::string safetensors_error(const std::string& path, const std::string& bytes) {
  write_bytes(path, bytes);
  try {
    SafetensorsReader r(path);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

nlohmann::json entry(const std::string& dtype, const nlohmann::json& shape, uint64_t begin, uint64_t end) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
}

// Found by fuzz/checkpoint_fuzz.cc: a tensor name holding a newline (JSON
// "\n") made a refusal of two lines. Names and dtypes from the file are
// printed escaped, and cut.
TEST(Safetensors, RefusalIsOneLineWhateverTheNames) {
  TempDir d;
  const std::string path = d / "a.safetensors";
  std::string e = safetensors_error(path, raw_safetensors({{"a\nb", entry("F32", {1}, 0, 8)}}, "abcdefgh"));
  EXPECT_EQ(e, path + ": tensor a\\x0ab: data_offsets [0, 8) do not hold F32 [1]");
  e = safetensors_error(path, raw_safetensors({{"a", entry("F\r32", {1}, 0, 4)}}, "abcd"));
  EXPECT_EQ(e, path + ": tensor a: unknown dtype F\\x0d32");
  e = safetensors_error(path, raw_safetensors({{std::string(5000, 'x') + "\n", entry("F32", {2}, 0, 4)}}, "abcd"));
  EXPECT_EQ(e.find('\n'), std::string::npos);
  EXPECT_LT(e.size(), 400u) << "a long name is cut";
  e = safetensors_error(path, raw_safetensors({{"__metadata__", {{"k\n", 1}}}}, ""));
  EXPECT_EQ(e, path + ": __metadata__ k\\x0a is not a string");
}

// Found by review, replayed through fuzz/checkpoint_fuzz.cc (UBSan: signed
// integer overflow): element counts were multiplied in int64 unchecked, so
// [2^32, 2^32] F32 (2^64 elements) and [2^62] F32 (2^64 bytes) wrapped to an
// empty tensor at [0, 0) and were accepted, a shape that read() would then
// allocate. A size past int64, or a product past the file, is refused.
TEST(Safetensors, HugeShapesAreRefusedNotWrapped) {
  TempDir d;
  const std::string path = d / "a.safetensors";
  const std::vector<nlohmann::json> shapes = {
      {uint64_t{1} << 32, uint64_t{1} << 32}, {uint64_t{1} << 62}, {uint64_t{1} << 63}, {~uint64_t{0}},
      {uint64_t{1} << 40, uint64_t{1} << 40, 0}};
  for (const auto& shape : shapes) {
    const std::string e = safetensors_error(path, raw_safetensors({{"a", entry("F32", shape, 0, 0)}}, ""));
    EXPECT_EQ(e.rfind(path + ": tensor a: shape ", 0), 0u) << shape.dump() << ": " << e;
  }
  // A large shape that the file does not hold is refused before the offsets are compared.
  const std::string e = safetensors_error(path, raw_safetensors({{"a", entry("F32", {1000, 1000}, 0, 16)}}, "0123456789abcdef"));
  EXPECT_EQ(e.rfind(path + ": tensor a: shape [1000, 1000] of F32 is 4000000 bytes", 0), 0u) << e;
}

// Found by the property fuzz/checkpoint_fuzz.cc checks (what was read writes
// back and reads again): an empty tensor whose offset is another tensor's
// start was refused as a "hole or overlap" when it sorted after it, so the
// writer's own file could be refused. Tensors are ordered by (begin, end).
TEST(Safetensors, EmptyTensorBesideAnother) {
  TempDir d;
  const std::string path = d / "a.safetensors";
  write_safetensors(path, {{"b", Tensor::zeros({0}, DType::f32, host_ctx())},
                           {"a", Tensor::from_host<float>({1.f, 2.f, 3.f, 4.f}, {4})},
                           {"c", Tensor::zeros({3, 0}, DType::f32, host_ctx())}});
  SafetensorsReader rd(path);
  ASSERT_EQ(rd.tensors().size(), 3u);
  EXPECT_EQ(rd.read(*rd.find("a")).f32()[3], 4.f);
  EXPECT_EQ(rd.read(*rd.find("c")).shape(), (Shape{3, 0}));
}

// A writer killed mid-checkpoint leaves its staging behind; a run's start
// removes it and nothing else.
TEST(CheckpointStore, StaleStagingIsRemoved) {
  TempDir d;
  for (const char* dir : {".step_00000010.tmp", ".step_00000020.replaced", "step_00000030", ".other"})
    fs::create_directories(join_path(join_path(d.path, dir), "sub"));
  std::ofstream(join_path(d.path, "latest.tmp")) << "step_00000030\n";
  std::ofstream(join_path(d.path, "latest")) << "step_00000030\n";
  EXPECT_EQ(remove_stale_staging(d.path), 2);
  for (const char* gone : {".step_00000010.tmp", "latest.tmp"}) EXPECT_FALSE(fs::exists(join_path(d.path, gone))) << gone;
  // (A step moved aside may be the one copy left by a crash: kept.)
  for (const char* kept : {"step_00000030", ".other", "latest", ".step_00000020.replaced"})
    EXPECT_TRUE(fs::exists(join_path(d.path, kept))) << kept;
  EXPECT_EQ(remove_stale_staging(d.path), 0);
}

TEST(CheckpointStore, PublishReplacesLatestAndKeepsTheNewest) {
  TempDir d;
  auto write = [&](int64_t step) {
    const std::string tmp = "." + step_dir_name(step) + ".tmp";
    fs::create_directories(d / tmp);
    std::ofstream(join_path(d / tmp, "manifest.pbtxt")) << "step: " << step << "\n";
    publish_checkpoint(d.path, tmp, step_dir_name(step));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // distinct write times
  };
  for (int64_t s : {10, 20, 30}) write(s);
  EXPECT_EQ(resolve_checkpoint("latest", d.path), d / "step_00000030");
  EXPECT_EQ(resolve_checkpoint(d.path, "elsewhere"), d / "step_00000030");
  EXPECT_EQ(resolve_checkpoint(d / "step_00000010", "elsewhere"), d / "step_00000010");
  // A resumed run rewrites step 20: it replaces the old one whole (none of
  // its files left) and is the newest; nothing is left beside it.
  std::ofstream(join_path(d / "step_00000020", "old.safetensors")) << "x";
  write(20);
  EXPECT_EQ(read_bytes(join_path(d / "step_00000020", "manifest.pbtxt")), "step: 20\n");
  EXPECT_FALSE(fs::exists(join_path(d / "step_00000020", "old.safetensors")));
  for (const auto& e : fs::directory_iterator(d.path)) EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  prune_checkpoints(d.path, 2);
  EXPECT_FALSE(fs::exists(d / "step_00000010"));
  EXPECT_TRUE(fs::exists(d / "step_00000020"));
  EXPECT_TRUE(fs::exists(d / "step_00000030"));
  EXPECT_EQ(resolve_checkpoint("latest", d.path), d / "step_00000020");
  prune_checkpoints(d.path, 1);
  EXPECT_TRUE(fs::exists(d / "step_00000020")) << "latest is never pruned";
  EXPECT_FALSE(fs::exists(d / "step_00000030"));
  for (const auto& e : fs::directory_iterator(d.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  EXPECT_THROW(resolve_checkpoint("latest", d / "none"), ConfigError);
  EXPECT_THROW(resolve_checkpoint(d / "none", d.path), ConfigError);
}

// A damaged `latest` (binary bytes, a path out of the directory) is refused
// with its bytes escaped, not followed or echoed raw.
TEST(CheckpointStore, DamagedLatestIsRefusedEscaped) {
  TempDir d;
  for (const std::string junk : {std::string("\x1b[2Jstep\x01"), std::string("../elsewhere")}) {
    std::ofstream(d / "latest") << junk << "\n";
    const std::string m = testing::error_of([&] { resolve_checkpoint("latest", d.path); });
    EXPECT_NE(m.find("latest: \""), std::string::npos) << m;
    EXPECT_NE(m.find("not the name of a checkpoint directory beside it"), std::string::npos) << m;
    EXPECT_EQ(m.find('\x1b'), std::string::npos) << "escaped";
  }
}

// A checkpoint counts the data its batches came from; a run resumed on other
// data says so at its start (its stream draws other windows than the
// uninterrupted run's), and on the same data says nothing.
TEST(Checkpoint, ResumingOnOtherDataIsSaid) {
  TempDir d;
  Config cfg = routed_config(d.path);
  Trainer a(cfg, {});
  a.step(1);
  const std::string dir = a.write_checkpoint();
  EXPECT_EQ(read_manifest(dir).data(), "train 9000 bytes, val 1000 bytes");
  auto start_lines = [&](const Config& c) {
    std::ostringstream log;
    TrainOptions o;
    o.log = &log;
    Config two = c;
    two.mutable_train()->set_steps(2);
    Trainer b(two, o);
    b.restore(dir);
    b.run();
    return log.str();
  };
  EXPECT_EQ(start_lines(cfg).find("note: the checkpoint's run drew"), std::string::npos);
  cfg.mutable_data()->set_synthetic_bytes(20000);
  EXPECT_NE(start_lines(cfg).find("note: the checkpoint's run drew its batches from train 9000 bytes, val 1000 "
                                  "bytes; this run from train 18000 bytes, val 2000 bytes: its batches from here "
                                  "are not those the uninterrupted run would have drawn"),
            std::string::npos);
}

// A resumed run's elapsed_s goes on from the time its checkpoint records
// (every part of the run), not from 0; the checkpoint it writes records the
// sum again.
TEST(Checkpoint, ElapsedTimeContinuesOverAResume) {
  TempDir d;
  Config cfg = routed_config(d.path);
  cfg.mutable_train()->set_steps(2);
  Trainer a(cfg, {});
  a.run();
  const std::string dir = a.write_checkpoint();
  const double first = read_manifest(dir).train_seconds();
  EXPECT_GT(first, 0.0);
  // As if the first part had run an hour: the resumed metrics start there.
  const std::string manifest = dir + "/manifest.pbtxt";
  std::string text = read_whole_file(manifest, "manifest");
  const size_t at = text.find("train_seconds: ");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, text.find('\n', at) - at, "train_seconds: 3600");
  std::ofstream(manifest, std::ios::trunc) << text;
  Config more = cfg;
  more.mutable_train()->set_steps(4);
  more.mutable_train()->set_log_interval(1);
  TrainOptions o;
  o.metrics_path = d.path + "/m.jsonl";
  Trainer b(more, o);
  b.restore(dir);
  b.run();
  std::ifstream in(o.metrics_path);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_GE(j["elapsed_s"].get<double>(), 3600.0) << line;
    EXPECT_LT(j["elapsed_s"].get<double>(), 3600.0 + 600.0) << line;
    ++lines;
  }
  EXPECT_EQ(lines, 2);
  const double again = read_manifest(b.write_checkpoint()).train_seconds();
  EXPECT_GT(again, 3600.0);
}

TEST(Checkpoint, RoundTripTrainsOnBitForBit) {
  TempDir d;
  const Config cfg = routed_config(d.path);
  Trainer a(cfg, {});
  for (int s = 1; s <= 3; ++s) a.step(s);
  const std::string dir = a.write_checkpoint();
  EXPECT_EQ(dir, d / "step_00000003");
  EXPECT_EQ(resolve_checkpoint("latest", d.path), dir);

  Trainer b(cfg, {});
  EXPECT_TRUE(model_state(a.model()) != model_state(b.model()));
  b.restore(dir);
  EXPECT_EQ(b.completed_steps(), 3);
  ASSERT_TRUE(model_state(a.model()) == model_state(b.model())) << "every parameter, moment and routing state";
  for (int s = 4; s <= 6; ++s) {
    const StepResult ra = a.step(s), rb = b.step(s);
    EXPECT_EQ(ra.loss, rb.loss) << "step " << s;
    EXPECT_EQ(ra.grad_norm, rb.grad_norm) << "step " << s;
  }
  EXPECT_TRUE(model_state(a.model()) == model_state(b.model()));

  const auto m = read_manifest(dir);
  EXPECT_EQ(m.step(), 3);
  EXPECT_EQ(m.optimizer_step(), 3);
  EXPECT_EQ(m.data_position(), 3u);
  EXPECT_EQ(m.tokens_seen(), 3 * 4 * 16);
  EXPECT_EQ(m.config().model().d_model(), 16);
  EXPECT_TRUE(m.config().model().has_init_std()) << "the resolved config spells out defaults";
  EXPECT_EQ(m.centroids_size(), 2);
  EXPECT_TRUE(m.centroids(0).initialized());
  EXPECT_EQ(m.balance_biases_size(), 2);
  EXPECT_NO_THROW(verify_checkpoint(dir, m));
}

// A write that fails part-way (here a file-size limit: EFBIG, as a full
// disk's ENOSPC) throws with the file named and leaves no unpublished
// .step_*.tmp directory behind; an unusable train.checkpoint_dir is one line.
TEST(Checkpoint, AFailedWriteLeavesNothingBehind) {
  TempDir d;
  const Config cfg = routed_config(d.path);
  Trainer a(cfg, {});
  a.step(1);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // (the write returns EFBIG instead)
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string error;
  try {
    a.write_checkpoint();
  } catch (const Error& e) {
    error = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(error.find(".step_00000001.tmp/"), std::string::npos) << error;
  EXPECT_NE(error.find("write failed after"), std::string::npos) << error;
  for (const auto& e : fs::directory_iterator(d.path)) ADD_FAILURE() << "left behind: " << e.path();
  const std::string dir = a.write_checkpoint();  // (and a later one is whole)
  EXPECT_NO_THROW(verify_checkpoint(dir, read_manifest(dir)));

  Config bad = cfg;
  bad.mutable_train()->set_checkpoint_dir(dir + "/manifest.pbtxt");
  Trainer c(bad, {});
  c.step(1);
  EXPECT_NE(testing::error_of([&] { c.write_checkpoint(); })
                .find("train.checkpoint_dir = " + dir + "/manifest.pbtxt: exists and is not a directory"),
            std::string::npos);
}

// Config.precision BF16: checkpoints hold the fp32 masters; a restore
// rewrites the bf16 shadows from them, so the resumed run trains on bit for
// bit (stale shadows, bf16 of the fresh model's init, would not).
TEST(Checkpoint, Bf16RoundTripRefreshesTheShadows) {
  TempDir d;
  Config cfg = routed_config(d.path);
  cfg.set_precision(switchyard::Config::BF16);
  Trainer a(cfg, {});
  for (int s = 1; s <= 3; ++s) a.step(s);
  const std::string dir = a.write_checkpoint();
  Trainer b(cfg, {});
  b.restore(dir);
  for (Param* p : b.model().params().all()) {
    const Tensor want = p->value.to(DType::bf16);
    ASSERT_EQ(std::memcmp(want.raw(), p->value_bf16.raw(), want.nbytes()), 0) << p->name;
  }
  for (int s = 4; s <= 5; ++s) {
    const StepResult ra = a.step(s), rb = b.step(s);
    EXPECT_EQ(ra.loss, rb.loss) << "step " << s;
    EXPECT_EQ(ra.grad_norm, rb.grad_norm) << "step " << s;
  }
  EXPECT_TRUE(model_state(a.model()) == model_state(b.model()));
}

// The model options (RoPE, RMSNorm, SwiGLU experts top-2 renormalised, no
// biases, tied embeddings) are config fields: the manifest's resolved config
// carries them, a restore rebuilds the same model, and it trains on bit for
// bit. A different rope_base is refused (same shapes, another function).
TEST(Checkpoint, LlamaLayoutRoundTripsBitForBit) {
  TempDir d;
  Config cfg = parse_config(R"(
    model { d_model: 16 n_layers: 2 n_heads: 2 ffn_hidden: 24 seq_len: 16
            position: ROPE rope_base: 500 norm: RMSNORM activation: SWIGLU bias: false tie_embeddings: true }
    train { batch: 4 steps: 6 warmup_steps: 1 eval_batches: 1 seed: 7 }
    data { synthetic_bytes: 10000 }
    moe { num_experts: 4 top_k: 2 renormalize: true dropless: true every_n_layers: 1 }
  )", "test");
  cfg.mutable_train()->set_checkpoint_dir(d.path);
  validate_config(cfg, "test");
  Trainer a(cfg, {});
  for (int s = 1; s <= 3; ++s) a.step(s);
  const std::string dir = a.write_checkpoint();
  const auto m = read_manifest(dir);
  EXPECT_EQ(m.config().model().position(), switchyard::ModelConfig::ROPE);
  EXPECT_EQ(m.config().model().norm(), switchyard::ModelConfig::RMSNORM);
  EXPECT_EQ(m.config().model().activation(), switchyard::ModelConfig::SWIGLU);
  EXPECT_FALSE(m.config().model().bias());
  EXPECT_TRUE(m.config().model().tie_embeddings());
  EXPECT_EQ(m.config().model().rope_base(), 500.f);

  // Restored from the manifest's config alone (train_switch --resume without --config).
  Config from_manifest = m.config();
  from_manifest.mutable_train()->set_checkpoint_dir(d.path);
  Trainer b(from_manifest, {});
  EXPECT_TRUE(model_state(a.model()) != model_state(b.model()));
  b.restore(dir);
  ASSERT_TRUE(model_state(a.model()) == model_state(b.model())) << "every parameter and moment";
  for (int s = 4; s <= 6; ++s) {
    const StepResult ra = a.step(s), rb = b.step(s);
    EXPECT_EQ(ra.loss, rb.loss) << "step " << s;
    EXPECT_EQ(ra.grad_norm, rb.grad_norm) << "step " << s;
  }
  EXPECT_TRUE(model_state(a.model()) == model_state(b.model()));

  Config other_base = cfg;
  apply_override(other_base, "model.rope_base=10000");
  try {
    check_compatible(other_base, m, dir);
    ADD_FAILURE() << "a different rope_base was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(": model.rope_base = 10000 in this run, 500 in the checkpoint"), std::string::npos)
        << e.what();
  }
}

TEST(Checkpoint, ExpertsUnderGlobalNames) {
  TempDir d;
  const Config cfg = routed_config(d.path);
  Trainer a(cfg, {});
  a.step(1);
  const auto m = read_manifest(a.write_checkpoint());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& f : m.files())
    for (const auto& t : f.tensors()) shapes[t.name()] = {t.shape().begin(), t.shape().end()};
  for (int g = 0; g < 4; ++g) {
    EXPECT_EQ(shapes["h1.moe.experts.w1.e" + std::to_string(g)], (std::vector<int64_t>{16, 24}));
    EXPECT_EQ(shapes["h1.moe.experts.b2.e" + std::to_string(g)], (std::vector<int64_t>{16}));
    EXPECT_EQ(shapes["h1.moe.experts.w1.e" + std::to_string(g) + ".exp_avg_sq"], (std::vector<int64_t>{16, 24}));
  }
  EXPECT_EQ(shapes.count("h1.moe.experts.w1.e4"), 0u);
  EXPECT_EQ(shapes["h0.attn.centroids.0.mu"], (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(shapes["h1.moe.router.balance_bias"], (std::vector<int64_t>{4}));
}

// Experts of different widths under a hard budget: each expert's pieces are
// stored under its global name with its own shape, and a restored run trains
// on bit for bit (the budget itself keeps no state: it is the config's).
TEST(Checkpoint, HeterogeneousExpertsUnderTheirOwnShapes) {
  TempDir d;
  Config cfg = routed_config(d.path);
  for (int h : {8, 8, 40, 40}) cfg.mutable_moe()->add_expert_hidden(h);
  cfg.mutable_moe()->set_budget_mode(switchyard::MoeConfig::HARD);
  cfg.mutable_moe()->set_budget(0.8f);
  cfg.mutable_moe()->set_budget_coef(0.5f);
  validate_config(cfg, "test");
  Trainer a(cfg, {});
  for (int s = 1; s <= 2; ++s) a.step(s);
  const std::string dir = a.write_checkpoint();
  Trainer b(cfg, {});
  b.restore(dir);
  ASSERT_TRUE(model_state(a.model()) == model_state(b.model()));
  for (int s = 3; s <= 4; ++s) EXPECT_EQ(a.step(s).loss, b.step(s).loss) << "step " << s;
  const auto m = read_manifest(dir);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& f : m.files())
    for (const auto& t : f.tensors()) shapes[t.name()] = {t.shape().begin(), t.shape().end()};
  EXPECT_EQ(shapes["h0.moe.experts.w1.e1"], (std::vector<int64_t>{16, 8}));
  EXPECT_EQ(shapes["h0.moe.experts.w1.e2"], (std::vector<int64_t>{16, 40}));
  EXPECT_EQ(shapes["h1.moe.experts.b1.e3"], (std::vector<int64_t>{40}));
  EXPECT_EQ(shapes["h1.moe.experts.w2.e0.exp_avg"], (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(shapes["h1.moe.experts.b2.e3"], (std::vector<int64_t>{16}));
  EXPECT_NO_THROW(verify_checkpoint(dir, m));
  // The same model with equal widths is another model: refused, not misread.
  Config equal = routed_config(d / "equal");
  Trainer c(equal, {});
  try {
    c.restore(dir);
    ADD_FAILURE() << "restore did not refuse";
  } catch (const AgreedError& e) {
    EXPECT_NE(std::string(e.what()).find("moe.expert_hidden = [24, 24, 24, 24] in this run, [8, 8, 40, 40] in the "
                                         "checkpoint"),
              std::string::npos)
        << e.what();
  }
}

// A refusal names the file and the tensor, and leaves the model and the
// directory as they were.
class Refusal : public ::testing::Test {
 protected:
  void SetUp() override {
    Trainer a(cfg_, {});
    for (int s = 1; s <= 2; ++s) a.step(s);
    dir_ = a.write_checkpoint();
    other_ = routed_config(d_ / "other", 2, 32);
    Trainer b(other_, {});
    b.step(1);
    other_dir_ = b.write_checkpoint();
  }
  // The error of restoring dir_ into a fresh trainer; checks nothing changed.
  std::string refusal() {
    Trainer t(cfg_, {});
    const std::string before = model_state(t.model()), files = dir_state(dir_);
    try {
      t.restore(dir_);
    } catch (const AgreedError& e) {
      EXPECT_TRUE(model_state(t.model()) == before) << "a failed load changed the model";
      EXPECT_TRUE(dir_state(dir_) == files) << "a failed load changed the checkpoint";
      return e.what();
    }
    ADD_FAILURE() << "restore did not refuse";
    return "";
  }
  std::string file(const std::string& name) const { return join_path(dir_, name); }
  TempDir d_;
  Config cfg_ = routed_config(d_.path), other_;
  std::string dir_, other_dir_;
};

TEST_F(Refusal, TruncatedFile) {
  const std::string f = file("optim-experts-00000-of-00001.safetensors"), b = read_bytes(f);
  write_bytes(f, b.substr(0, b.size() - 10));
  const std::string e = refusal();
  EXPECT_EQ(e.rfind(f + ": truncated", 0), 0u) << e;
  EXPECT_NE(e.find("h1.moe.experts.b2.e3.exp_avg_sq"), std::string::npos) << e;
}

TEST_F(Refusal, FlippedBitNamesTheTensor) {
  const std::string f = file("model-dense.safetensors");
  std::string b = read_bytes(f);
  b[b.size() - 3] ^= 0x10;  // inside the last tensor: head.w
  write_bytes(f, b);
  const std::string e = refusal();
  EXPECT_EQ(e.rfind(f + ": tensor head.w: CRC-32 ", 0), 0u) << e;
  EXPECT_NE(e.find("its bytes are corrupt"), std::string::npos) << e;
}

TEST_F(Refusal, WrongDtype) {
  const std::string f = file("model-dense.safetensors");
  std::string b = read_bytes(f);
  const size_t at = b.find("\"F32\"", b.find("\"wte\""));
  b.replace(at, 5, "\"I32\"");  // same size: the file stays consistent
  write_bytes(f, b);
  EXPECT_EQ(refusal(), f + ": tensor wte: dtype I32 in the file, F32 in the manifest");
}

TEST_F(Refusal, MissingTensor) {
  // A manifest and a file that agree, without the tensor the model needs.
  const std::string f = file("routing.safetensors");
  SafetensorsReader rd(f);
  std::vector<TensorRecord> recs = rd.tensors();
  std::sort(recs.begin(), recs.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
  NamedTensors keep;  // the others, in their places
  for (const auto& t : recs)
    if (t.name != "h1.moe.router.balance_bias") keep.emplace_back(t.name, rd.read(t));
  write_safetensors(f, keep);
  std::string m = read_bytes(file("manifest.pbtxt"));
  const size_t at = m.find("    name: \"h1.moe.router.balance_bias\"");
  m.erase(m.rfind("  tensors {", at), m.find("  }\n", at) + 4 - m.rfind("  tensors {", at));
  write_bytes(file("manifest.pbtxt"), m);
  const std::string e = refusal();
  // The file's size and CRC in the manifest are the old ones: the first
  // difference found is the size.
  EXPECT_EQ(e.rfind(f + ": ", 0), 0u) << e;
  // With those fixed, the missing tensor itself is named.
  SafetensorsReader now(f);
  const FileDigest dg = now.digest();
  const size_t fat = m.find("name: \"routing.safetensors\"");
  const size_t b0 = m.find("bytes: ", fat), b1 = m.find('\n', b0), c0 = m.find("crc32: ", fat), c1 = m.find('\n', c0);
  m.replace(c0, c1 - c0, "crc32: " + std::to_string(dg.crc32));
  m.replace(b0, b1 - b0, "bytes: " + std::to_string(dg.bytes));
  write_bytes(file("manifest.pbtxt"), m);
  EXPECT_EQ(refusal(), file("manifest.pbtxt") + ": tensor h1.moe.router.balance_bias is missing (this model needs it)");
}

TEST_F(Refusal, ManifestOfAnotherModel) {
  fs::copy_file(join_path(other_dir_, "manifest.pbtxt"), file("manifest.pbtxt"), fs::copy_options::overwrite_existing);
  EXPECT_EQ(refusal().rfind(file("manifest.pbtxt") + ": model.d_model = 16 in this run, 32 in the checkpoint", 0), 0u);
  // Read as its own config (train_switch --resume without --config), the
  // manifest describes files that are not there.
  Trainer t(other_, {});
  try {
    t.restore(dir_);
    ADD_FAILURE() << "restore did not refuse";
  } catch (const AgreedError& e) {
    EXPECT_EQ(std::string(e.what()).rfind(file("model-dense.safetensors") + ": tensor ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("shape [256, 16] in the file, [256, 32] in the manifest"), std::string::npos)
        << e.what();
  }
}

TEST_F(Refusal, MissingFileAndMissingManifest) {
  fs::remove(file("optim-dense.safetensors"));
  EXPECT_EQ(refusal(), file("optim-dense.safetensors") + ": missing (the manifest lists it as a file)");
  fs::create_directory(file("optim-dense.safetensors"));
  EXPECT_EQ(refusal(), file("optim-dense.safetensors") + ": is a directory (the manifest lists it as a file)");
  fs::remove(file("manifest.pbtxt"));
  EXPECT_EQ(refusal().rfind(file("manifest.pbtxt") + ": missing", 0), 0u);
}

// Found by review: file names in the manifest were joined to the directory
// as they were, so "../x" read a file outside the checkpoint, and a name
// longer than the file system allows threw std::filesystem_error (exit 1,
// not a one-line refusal). A name is a plain file name or the manifest is
// refused naming the field.
TEST_F(Refusal, ManifestFileNamesStayInTheCheckpoint) {
  const std::string m = read_bytes(file("manifest.pbtxt"));
  fs::copy_file(file("routing.safetensors"), d_ / "elsewhere.safetensors");
  for (const std::string& name : {std::string("../elsewhere.safetensors"), std::string(300, 'x'), std::string("a\\nb")}) {
    std::string edited = m;
    edited.replace(edited.find("\"routing.safetensors\""), 21, "\"" + name + "\"");
    write_bytes(file("manifest.pbtxt"), edited);
    const std::string e = refusal();
    EXPECT_EQ(e.rfind(file("manifest.pbtxt") + ": files[", 0), 0u) << e;
    EXPECT_NE(e.find("].name = \""), std::string::npos) << e;
    EXPECT_NE(e.find("\": must be a file name in the checkpoint directory"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
}

// Found by the same one-line property: a tensor name in the manifest holding
// a newline (text format "\n") made the refusal two lines.
TEST_F(Refusal, ManifestTensorNameIsPrintedEscaped) {
  std::string m = read_bytes(file("manifest.pbtxt"));
  m.replace(m.find("name: \"wte\""), 11, "name: \"wte\\nx\"");
  write_bytes(file("manifest.pbtxt"), m);
  EXPECT_EQ(refusal(), file("model-dense.safetensors") + ": tensor wte\\x0ax: missing from the file (the manifest lists it)");
}

// Found by review: the training position was taken as written, so a
// negative step or optimizer_step, or a data position past the data
// stream's 32-bit batch numbers, loaded. Each is refused naming the field.
TEST_F(Refusal, TrainingPositionOutOfRange) {
  const std::string m = read_bytes(file("manifest.pbtxt"));
  ASSERT_NE(m.find("\nstep: 2\n"), std::string::npos) << m;
  ASSERT_NE(m.find("\noptimizer_step: 2\n"), std::string::npos) << m;
  ASSERT_NE(m.find("\ndata_position: 2\n"), std::string::npos) << m;
  const std::string path = file("manifest.pbtxt");
  for (auto [line, want] : std::vector<std::pair<std::string, std::string>>{
           {"step: -1", "step = -1: must be in [0, 100000000] (train.steps' range)"},
           {"step: 100000001", "step = 100000001: must be in [0, 100000000] (train.steps' range)"},
           {"optimizer_step: -1", "optimizer_step = -1: must be in [0, step = 2] (AdamW updates are at most the steps)"},
           {"optimizer_step: 3", "optimizer_step = 3: must be in [0, step = 2] (AdamW updates are at most the steps)"},
           {"data_position: 4294967296",
            "data_position = 4294967296: must be in [0, 4294967295] (the data stream numbers its batches in 32 bits)"}}) {
    const std::string field = line.substr(0, line.find(':'));
    std::string edited = m;
    const size_t at = edited.find("\n" + field + ": 2\n") + 1;
    edited.replace(at, field.size() + 3, line);
    write_bytes(path, edited);
    EXPECT_EQ(refusal(), path + ": " + want);
    EXPECT_THROW(read_manifest(dir_), ConfigError) << line;  // sample and export_hf read it too
  }
  // The counters and layout besides: a whole line replaced.
  for (auto [field, line, want] : std::vector<std::array<std::string, 3>>{
           {"tokens_seen", "tokens_seen: -1", "tokens_seen = -1: must be in [0, ...)"},
           {"bad_steps", "bad_steps: -1", "bad_steps = -1: must be in [0, step = 2]"},
           {"bad_steps", "bad_steps: 3", "bad_steps = 3: must be in [0, step = 2]"},
           {"bad_steps_in_a_row", "bad_steps_in_a_row: -1", "bad_steps_in_a_row = -1: must be in [0, bad_steps = 0]"},
           {"bad_steps_in_a_row", "bad_steps_in_a_row: 1", "bad_steps_in_a_row = 1: must be in [0, bad_steps = 0]"},
           {"world_size", "world_size: 0", "world_size = 0: must be in [1, ...)"},
           {"expert_parallel", "expert_parallel: 3", "expert_parallel = 3: must be in the divisors of world_size = 1"}}) {
    const size_t at = m.find("\n" + field + ": ");
    ASSERT_NE(at, std::string::npos) << field << " in " << m;
    std::string edited = m;
    edited.replace(at + 1, m.find('\n', at + 1) - at - 1, line);
    write_bytes(path, edited);
    EXPECT_EQ(refusal(), path + ": " + want);
  }
  write_bytes(path, m);
  EXPECT_NO_THROW(read_manifest(dir_));
}

TEST_F(Refusal, ChangedModelShapeNamesTheField) {
  for (auto [field, value] : std::vector<std::pair<std::string, std::string>>{
           {"model.n_layers", "3"}, {"moe.num_experts", "8"}, {"attention.num_routing_heads", "2"},
           {"model.position", "ROPE"}, {"model.norm", "RMSNORM"}, {"model.activation", "SWIGLU"}, {"model.bias", "false"},
           {"model.tie_embeddings", "true"}, {"model.n_kv_heads", "1"}, {"moe.first_dense_layers", "1"},
           {"moe.router", "HASH"}}) {
    Config c = cfg_;
    apply_override(c, field + "=" + value);
    try {
      check_compatible(c, read_manifest(dir_), dir_);
      ADD_FAILURE() << field;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(": " + field + " = " + value + " in this run"), std::string::npos)
          << e.what();
    }
  }
  // Hash routing's map comes from the seed: a hashed run resumes with its own.
  switchyard::CheckpointManifest hashed = read_manifest(dir_);
  hashed.mutable_config()->mutable_moe()->set_router(switchyard::MoeConfig::HASH);
  Config h = hashed.config();
  apply_override(h, "train.seed=99");
  try {
    check_compatible(h, hashed, dir_);
    ADD_FAILURE() << "a hashed run resumed with another seed";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(": train.seed = 99 in this run"), std::string::npos) << e.what();
  }
  Config c = cfg_;
  apply_override(c, "train.lr=0.1");  // training settings may change
  EXPECT_NO_THROW(check_compatible(c, read_manifest(dir_), dir_));
  // n_kv_heads 0 and n_heads spell the same model
  apply_override(c, "model.n_kv_heads=" + std::to_string(c.model().n_heads()));
  EXPECT_NO_THROW(check_compatible(c, read_manifest(dir_), dir_));
}

TEST(NonFinite, SkippedStepChangesNothingButTheDataPosition) {
  TempDir d;
  Trainer t(routed_config(d.path), {});
  t.step(1);
  const std::string before = model_state(t.model());
  Param* p = t.model().params().find("h1.ln1.w");
  const float keep = p->value.f32()[0];
  p->value.f32()[0] = NAN;
  const StepResult r = t.step(2);
  EXPECT_TRUE(r.skipped);
  EXPECT_FALSE(std::isfinite(r.loss));
  p->value.f32()[0] = keep;
  EXPECT_TRUE(model_state(t.model()) == before) << "parameters, moments, centroids and biases as before the step";
  for (Param* q : t.model().params().all()) EXPECT_EQ(ops::count_nonfinite(host_ctx(), q->grad), 0) << q->name;
  EXPECT_FALSE(t.step(3).skipped);
  const auto m = read_manifest(t.write_checkpoint());
  EXPECT_EQ(m.bad_steps(), 1);
  EXPECT_EQ(m.optimizer_step(), 2) << "AdamW's step counts updates";
  EXPECT_EQ(m.data_position(), 3u) << "the skipped step's batch is consumed";
}

// The streak of bad steps that train.max_bad_steps stops a run at goes with
// the checkpoint: a run resumed inside a streak counts on from it.
TEST(NonFinite, BadStepsInARowSurviveAResume) {
  TempDir d;
  const Config cfg = routed_config(d.path);
  auto poisoned_step = [](Trainer& t, int64_t s) {
    Param* p = t.model().params().find("h1.ln1.w");
    const float keep = p->value.f32()[0];
    p->value.f32()[0] = NAN;
    EXPECT_TRUE(t.step(s).skipped);
    p->value.f32()[0] = keep;
  };
  Trainer a(cfg, {});
  a.step(1);
  poisoned_step(a, 2);
  poisoned_step(a, 3);
  const std::string dir = a.write_checkpoint();
  EXPECT_EQ(read_manifest(dir).bad_steps(), 2);
  EXPECT_EQ(read_manifest(dir).bad_steps_in_a_row(), 2);
  Trainer b(cfg, {});
  b.restore(dir, true);
  poisoned_step(b, 4);
  EXPECT_EQ(read_manifest(b.write_checkpoint()).bad_steps_in_a_row(), 3) << "the streak counts on after the resume";
  EXPECT_FALSE(b.step(5).skipped);
  const auto m = read_manifest(b.write_checkpoint());
  EXPECT_EQ(m.bad_steps_in_a_row(), 0) << "a finite step ends it";
  EXPECT_EQ(m.bad_steps(), 3);
}

TEST(NonFinite, FirstNonFinitePartIsNamed) {
  TempDir d;
  Trainer t(routed_config(d.path), {});
  t.step(1);
  Transformer& model = t.model();
  Batch b;
  for (int i = 0; i < 4 * 16; ++i) b.inputs.push_back(i % 256), b.targets.push_back((i + 1) % 256);
  EXPECT_EQ(model.first_nonfinite_part(b), -1);
  model.params().find("h1.attn.qkv.w")->value.f32()[3] = INFINITY;
  const int part = model.first_nonfinite_part(b);
  EXPECT_EQ(model.part_name(part), "block h1");
  model.params().find("wpe")->value.f32()[0] = NAN;
  EXPECT_EQ(model.part_name(model.first_nonfinite_part(b)), "embedding");
}

}  // namespace
}  // namespace sy
