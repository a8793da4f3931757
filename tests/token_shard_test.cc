// Token shards (runtime/token_shard.h), the split and window sampler over
// them (runtime/data.h) and TrainingData (runtime/training_data.h): the
// format written and read back, each refusal as one line naming the file,
// the field, the value and what is allowed, and exact windows.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "config_error.h"
#include "core/error.h"
#include "core/philox.h"
#include "runtime/config.h"
#include "runtime/data.h"
#include "runtime/output_file.h"
#include "runtime/token_shard.h"
#include "runtime/trainer.h"
#include "runtime/training_data.h"
#include "sentencepiece_model.pb.h"

namespace sy {
namespace {

using testing::error_of;

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class Shards : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("sy_shard_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // Writes raw bytes to `name`; returns its path.
  std::string raw(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path(name);
  }
  fs::path dir_;
};

void expect_refused(const std::string& file, uint32_t vocab, const std::vector<std::string>& needles) {
  const std::string m = error_of([&] { TokenShard s(file, vocab); });
  EXPECT_NE(m.find(file), std::string::npos) << m;  // names the file
  for (const std::string& n : needles) EXPECT_NE(m.find(n), std::string::npos) << "message: " << m << "\nwant: " << n;
}

// A valid header for `count` ids followed by `payload` bytes.
std::string shard_bytes(ShardHeader h, const std::string& payload) { return shard_header_bytes(h) + payload; }

std::string u16s(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

TEST_F(Shards, WriteThenReadUint16) {
  const std::vector<uint32_t> ids = {0, 1, 65535, 7, 300};
  write_token_shard(path("a.bin"), ids, 65536);
  EXPECT_EQ(fs::file_size(path("a.bin")), 32u + 2 * ids.size());
  EXPECT_FALSE(fs::exists(path("a.bin.tmp")));
  TokenShard s(path("a.bin"), 65536);
  EXPECT_EQ(s.header().dtype, 2u);
  EXPECT_EQ(s.header().vocab_size, 65536u);
  ASSERT_EQ(s.size(), 5);
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(s.id(static_cast<int64_t>(i)), ids[i]);
}

TEST_F(Shards, WriteThenReadUint32AndTheBytesOnDisk) {
  write_token_shard(path("b.bin"), {1048575, 65536, 3}, 1 << 20);
  TokenShard s(path("b.bin"), 1 << 20);
  EXPECT_EQ(s.header().dtype, 4u);
  EXPECT_EQ(s.id(0), 1048575u);
  EXPECT_EQ(s.id(1), 65536u);
  // The layout byte by byte: magic, version 1, dtype 4, count 3, vocab 2^20, reserved 0, ids.
  std::ifstream in(path("b.bin"), std::ios::binary);
  std::string b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string want = std::string("SYTOKENS") + std::string("\x01\0\0\0", 4) + std::string("\x04\0\0\0", 4) +
                           std::string("\x03\0\0\0\0\0\0\0", 8) + std::string("\0\0\x10\0", 4) + std::string(4, '\0') +
                           std::string("\xff\xff\x0f\0", 4) + std::string("\0\0\x01\0", 4) + std::string("\x03\0\0\0", 4);
  EXPECT_EQ(b, want);
}

// Found by review: a failed write said "cannot write N bytes" without the
// system's reason. Now the failing call's errno is named (ENOENT: no such
// directory; ENOSPC: /dev/full accepts no byte), and nothing is left behind.
TEST_F(Shards, WriteErrorsNameTheSystemsReason) {
  auto error = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "expected an Error";
    return std::string();
  };
  const std::string missing = path("no_such_dir/a.bin");
  EXPECT_EQ(error([&] { write_token_shard(missing, {1, 2}, 256); }),
            missing + ".tmp: cannot create: " + std::strerror(ENOENT));
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full here";
  EXPECT_EQ(error([] { write_file("/dev/full", "abc"); }),
            std::string("/dev/full: write failed after 0 of 3 bytes: ") + std::strerror(ENOSPC));
}

TEST_F(Shards, EmptyShardReadsAsNoIds) {
  write_token_shard(path("e.bin"), {}, 10);
  EXPECT_EQ(TokenShard(path("e.bin"), 10).size(), 0);
}

TEST_F(Shards, RefusesWrongMagic) {
  ShardHeader h;
  h.count = 1;
  h.vocab_size = 10;
  std::string b = shard_bytes(h, u16s({3}));
  b[0] = 'X';
  expect_refused(raw("m.bin", b), 10, {"magic = \"XYTOKENS\"", "must be \"SYTOKENS\""});
  expect_refused(raw("text.bin", "hello world, not a shard at all......"), 10, {"magic = \"hello wo\""});
}

TEST_F(Shards, RefusesVersionDtypeVocabAndReserved) {
  ShardHeader h;
  h.count = 1;
  h.vocab_size = 10;
  ShardHeader v = h;
  v.version = 2;
  expect_refused(raw("v.bin", shard_bytes(v, u16s({3}))), 10, {"version = 2", "must be 1"});
  ShardHeader d = h;
  d.dtype = 3;
  expect_refused(raw("d.bin", shard_bytes(d, "abc")), 10, {"dtype = 3", "must be 2 (uint16) or 4 (uint32)"});
  ShardHeader z = h;
  z.vocab_size = 0;
  expect_refused(raw("z.bin", shard_bytes(z, u16s({0}))), 10, {"vocab_size = 0", "must be in [1, 1048576]"});
  ShardHeader w = h;
  w.vocab_size = 70000;  // more than uint16 ids can name
  expect_refused(raw("w.bin", shard_bytes(w, u16s({0}))), 1 << 20, {"vocab_size = 70000", "dtype 2"});
  std::string r = shard_bytes(h, u16s({3}));
  r[28] = 1;
  expect_refused(raw("r.bin", r), 10, {"reserved = 1", "must be 0"});
}

TEST_F(Shards, RefusesTruncatedFiles) {
  ShardHeader h;
  h.count = 4;
  h.vocab_size = 10;
  const std::string full = shard_bytes(h, u16s({1, 2, 3, 4}));
  // Cut inside the header, then inside the ids (a partial id too).
  expect_refused(raw("h.bin", full.substr(0, 20)), 10, {"file size = 20 bytes", "truncated", "32-byte header"});
  expect_refused(raw("empty.bin", ""), 10, {"file size = 0 bytes", "truncated"});
  expect_refused(raw("t.bin", full.substr(0, 32 + 5)), 10,
                 {"count = 4", "truncated", "5 bytes of ids", "room for 2 ids and a partial one"});
}

TEST_F(Shards, RefusesCountThatDoesNotMatchTheSize) {
  ShardHeader h;
  h.count = 2;
  h.vocab_size = 10;
  expect_refused(raw("x.bin", shard_bytes(h, u16s({1, 2, 3}))), 10,
                 {"count = 2", "does not match the file size", "6 bytes of ids", "room for 3 ids"});
  h.count = ~uint64_t{0};  // count * dtype overflows 64 bits
  expect_refused(raw("o.bin", shard_bytes(h, u16s({1}))), 10, {"count = 18446744073709551615", "truncated"});
}

TEST_F(Shards, RefusesIdsOutsideTheVocabulary) {
  ShardHeader h;
  h.count = 3;
  h.vocab_size = 10;
  expect_refused(raw("i.bin", shard_bytes(h, u16s({1, 2, 10}))), 10,
                 {"id[2] = 10", "must be < model.vocab_size = 10"});
  // Below the model's vocabulary but not below the header's.
  expect_refused(raw("j.bin", shard_bytes(h, u16s({1, 11, 2}))), 100, {"id[1] = 11", "the header's vocab_size = 10"});
  // A tokenizer larger than the model.
  write_token_shard(path("k.bin"), {1, 2}, 4096);
  expect_refused(path("k.bin"), 2048, {"vocab_size = 4096", "must be <= model.vocab_size = 2048"});
}

TEST_F(Shards, GlobIsSortedAndNamesAnEmptyMatch) {
  write_token_shard(path("train_000001.bin"), {1}, 4);
  write_token_shard(path("train_000000.bin"), {1}, 4);
  const auto files = expand_glob(path("train_*.bin"), "data.token_files");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], path("train_000000.bin"));
  const std::string m = error_of([&] { expand_glob(path("val_*.bin"), "data.val_token_files"); });
  EXPECT_NE(m.find("data.val_token_files = \"" + path("val_*.bin") + "\": matches no file"), std::string::npos) << m;
}

// Shards of 5, 2 and 7 ids with T = 3: runs hold 2, 0 and 4 window starts,
// W = 6, numbered 0-1 in the first shard and 2-5 in the third.
struct ThreeShards {
  std::vector<uint16_t> a = {100, 101, 102, 103, 104}, b = {200, 201}, c = {300, 301, 302, 303, 304, 305, 306};
  Split split() const {
    Split s;
    s.add(a.data(), 5, 2);
    s.add(b.data(), 2, 2);
    s.add(c.data(), 7, 2);
    return s;
  }
};

TEST(TokenWindows, NumberingByHand) {
  ThreeShards t;
  WindowSampler s(t.split(), 6, 3, 7);
  ASSERT_EQ(s.windows(), 6);
  const std::pair<size_t, int64_t> want[6] = {{0, 0}, {0, 1}, {2, 0}, {2, 1}, {2, 2}, {2, 3}};
  for (int w = 0; w < 6; ++w) EXPECT_EQ(s.locate(w), want[w]) << "window " << w;
  EXPECT_THROW(s.locate(6), Error);
}

// The ids of window number w of ThreeShards (T = 3, T + 1 ids), by hand.
std::vector<int32_t> window_ids(int64_t w) {
  const int32_t first = w < 2 ? 100 + static_cast<int32_t>(w) : 300 + static_cast<int32_t>(w - 2);
  return {first, first + 1, first + 2, first + 3};
}

TEST(TokenWindows, TrainingDrawsAreThePhiloxNumbers) {
  ThreeShards t;
  const uint64_t seed = 7;
  WindowSampler s(t.split(), 6, 3, seed);
  std::vector<int64_t> seen;
  for (uint32_t n = 0; n < 4; ++n) {
    const Batch batch = s.next();
    for (uint64_t b = 0; b < 6; ++b) {
      // Window b of batch n: philox of counter (b, 0, n, data stream) under the seed, mod W.
      const Philox4 x = philox4x32_10(Philox4{{static_cast<uint32_t>(b), 0, n, 1}}, static_cast<uint32_t>(seed), 0);
      const int64_t w = static_cast<int64_t>(((uint64_t{x.v[0]} << 32) | x.v[1]) % 6);
      seen.push_back(w);
      const std::vector<int32_t> ids = window_ids(w);
      for (int k = 0; k < 3; ++k) {
        EXPECT_EQ(batch.inputs[b * 3 + k], ids[k]) << "batch " << n << " window " << b;
        EXPECT_EQ(batch.targets[b * 3 + k], ids[k + 1]) << "batch " << n << " window " << b;
      }
    }
  }
  EXPECT_EQ(s.position(), 4u);
  // The draws pinned, so a change to the keying shows here too.
  const std::vector<int64_t> pinned = {0, 3, 0, 1, 4, 0, 5, 0, 5, 5, 2, 4, 4, 4, 4, 4, 1, 0, 0, 4, 3, 2, 1, 2};
  EXPECT_EQ(seen, pinned);
  // A resumed sampler continues the stream.
  WindowSampler r(t.split(), 6, 3, seed);
  r.set_position(3);
  EXPECT_EQ(r.next().inputs[0], window_ids(seen[18])[0]);
}

TEST(TokenWindows, EvaluationWindowsByHand) {
  ThreeShards t;
  WindowSampler s(t.split(), 2, 3, 0);
  // Batch 1, window i: number floor(frac((1*2 + i) * 0.6180339887498949) * 6).
  const Batch b = s.fixed(1);
  const int64_t w0 = static_cast<int64_t>(std::fmod(2 * 0.6180339887498949, 1.0) * 6);  // 0.236 * 6 -> 1
  const int64_t w1 = static_cast<int64_t>(std::fmod(3 * 0.6180339887498949, 1.0) * 6);  // 0.854 * 6 -> 5
  EXPECT_EQ(w0, 1);
  EXPECT_EQ(w1, 5);
  EXPECT_EQ(std::vector<int32_t>(b.inputs.begin(), b.inputs.begin() + 3), std::vector<int32_t>({101, 102, 103}));
  EXPECT_EQ(std::vector<int32_t>(b.inputs.begin() + 3, b.inputs.end()), std::vector<int32_t>({303, 304, 305}));
  EXPECT_EQ(b.targets.back(), 306);
}

TEST(TokenWindows, EachRankDrawsItsSliceOfTheGlobalBatch) {
  ThreeShards t;
  for (int world : {1, 2, 3, 6}) {
    WindowSampler whole(t.split(), 6, 3, 11), part(t.split(), 6, 3, 11);
    for (int n = 0; n < 3; ++n) {
      const Batch all = whole.next();
      for (int r = 0; r < world; ++r) {
        WindowSampler mine(t.split(), 6, 3, 11);
        mine.set_position(n);
        const Batch got = mine.next(r, world), want = slice_batch(all, 3, r, world);
        EXPECT_EQ(got.inputs, want.inputs) << "world " << world << " rank " << r << " batch " << n;
        EXPECT_EQ(got.targets, want.targets);
        const Batch e = part.fixed(n, r, world), ew = slice_batch(part.fixed(n), 3, r, world);
        EXPECT_EQ(e.inputs, ew.inputs);
      }
    }
  }
}

TEST(TokenWindows, BytesAreOneRunOfOneByteIds) {
  const std::string text = "abcdefghij";
  WindowSampler s(&text, 4, 3, 5);
  EXPECT_EQ(s.windows(), 7);  // starts 0..6
  const Batch b = s.next();
  for (int i = 0; i < 4; ++i) {
    const char first = static_cast<char>(b.inputs[i * 3]);
    EXPECT_EQ(text.find(std::string(1, first)), static_cast<size_t>(first - 'a'));
    EXPECT_LE(first, 'g');
    EXPECT_EQ(b.targets[i * 3 + 2], first + 3);
  }
}

Config token_config(const std::string& train, const std::string& val, int vocab) {
  Config c;
  c.mutable_model()->set_vocab_size(vocab);
  c.mutable_model()->set_seq_len(4);
  c.mutable_model()->set_d_model(16);
  c.mutable_model()->set_n_heads(2);
  c.mutable_model()->set_ffn_hidden(32);
  c.mutable_train()->set_batch(2);
  c.mutable_data()->set_source(switchyard::DataConfig::TOKEN_FILES);
  c.mutable_data()->set_token_files(train);
  c.mutable_data()->set_val_token_files(val);
  validate_config(c, "t.pbtxt");
  return c;
}

TEST_F(Shards, TrainingDataOpensBothSplits) {
  write_token_shard(path("train_000000.bin"), {1, 2, 3, 4, 5, 6}, 300);
  write_token_shard(path("train_000001.bin"), {7, 8}, 300);  // shorter than a window: no starts
  write_token_shard(path("val_000000.bin"), {9, 10, 11, 12, 13}, 300);
  TrainingData d(token_config(path("train_*.bin"), path("val_*.bin"), 300));
  EXPECT_TRUE(d.tokens());
  EXPECT_EQ(d.train().tokens(), 8);
  EXPECT_EQ(d.val().tokens(), 5);
  EXPECT_EQ(d.train_unit(), "tokens in 2 shards");
  EXPECT_EQ(d.val_unit(), "tokens in 1 shard");
}

TEST_F(Shards, TrainingDataRefusals) {
  write_token_shard(path("train_000000.bin"), {1, 2, 3, 4, 5, 6}, 300);
  write_token_shard(path("val_000000.bin"), {1, 2, 3}, 300);
  std::string m = error_of([&] { TrainingData d(token_config(path("train_*.bin"), path("val_*.bin"), 300)); });
  EXPECT_NE(m.find("data.val_token_files = \"" + path("val_*.bin") + "\": 1 shard of 3 tokens in all, the longest 3; "
                   "a window of model.seq_len + 1 = 5 tokens must fit in one shard"),
            std::string::npos)
      << m;
  m = error_of([&] { TrainingData d(token_config(path("train_*.bin"), path("*.bin"), 300)); });
  EXPECT_NE(m.find("validation shards must be separate"), std::string::npos) << m;
  m = error_of([&] { TrainingData d(token_config(path("nothing_*.bin"), path("val_*.bin"), 300)); });
  EXPECT_NE(m.find("data.token_files = \"" + path("nothing_*.bin") + "\": matches no file"), std::string::npos) << m;
  // A directory of the pattern that does not exist (a corpus not yet
  // sharded): no match, naming it, not "cannot be read".
  m = error_of([&] { TrainingData d(token_config(path("absent/train_*.bin"), path("val_*.bin"), 300)); });
  EXPECT_NE(m.find("data.token_files = \"" + path("absent/train_*.bin") + "\": matches no file (directory " +
                   path("absent") + " does not exist"),
            std::string::npos)
      << m;
  m = error_of([&] { TrainingData d(token_config(path("train_*.bin"), path("val_*.bin"), 200)); });
  EXPECT_NE(m.find("vocab_size = 300"), std::string::npos) << m;
  write_token_shard(path("val_000000.bin"), {1, 2, 3, 4, 5}, 300);
  Config c = token_config(path("train_*.bin"), path("val_*.bin"), 300);
  c.mutable_data()->set_tokenizer(path("missing.model"));
  m = error_of([&] { TrainingData d(c); });
  EXPECT_NE(m.find("data.tokenizer = \"" + path("missing.model") + "\": no such file"), std::string::npos) << m;
  // A SentencePiece model that sample cannot decode (Unigram) still trains;
  // its pieces are checked against model.vocab_size all the same.
  auto unigram = [&](int n) {
    switchyard::spm::ModelProto mp;
    mp.mutable_trainer_spec()->set_model_type(switchyard::spm::ModelProto::TrainerSpec::UNIGRAM);
    for (int i = 0; i < n; ++i) mp.add_pieces()->set_piece("p" + std::to_string(i));
    std::ofstream(path("u.model"), std::ios::binary) << mp.SerializeAsString();
    c.mutable_data()->set_tokenizer(path("u.model"));
  };
  unigram(300);
  EXPECT_NO_THROW(TrainingData d(c));
  unigram(301);
  m = error_of([&] { TrainingData d(c); });
  EXPECT_NE(m.find("data.tokenizer = \"" + path("u.model") + "\": 301 pieces, more than model.vocab_size = 300"),
            std::string::npos)
      << m;
  // One tokenization: a tokenizer of another size than the shards', or
  // shards of two sizes (their ids name other pieces), are refused.
  unigram(299);
  m = error_of([&] { TrainingData d(c); });
  EXPECT_NE(m.find("data.tokenizer = \"" + path("u.model") + "\": 299 pieces, but " + path("train_000000.bin") +
                   " was written with vocab_size 300: not the tokenizer of these shards"),
            std::string::npos)
      << m;
  c.mutable_data()->clear_tokenizer();
  write_token_shard(path("val_000000.bin"), {1, 2, 3, 4, 5}, 250);
  m = error_of([&] { TrainingData d(c); });
  EXPECT_NE(m.find("data.val_token_files = \"" + path("val_*.bin") + "\": " + path("val_000000.bin") +
                   " was written with vocab_size 250, " + path("train_000000.bin") +
                   " with 300: a run's shards come from one tokenizer"),
            std::string::npos)
      << m;
}

// A model over 300 token ids trains on shards: the first loss is near
// ln 300 (uniform predictions at initialisation) and the loss falls on a
// stream it can learn (each id followed by the next, mod 300).
TEST_F(Shards, TrainerLearnsFromShards) {
  std::vector<uint32_t> ids;
  for (int i = 0; i < 3000; ++i) ids.push_back(static_cast<uint32_t>((i * 7) % 300));
  write_token_shard(path("train_000000.bin"), ids, 300);
  write_token_shard(path("val_000000.bin"), std::vector<uint32_t>(ids.begin(), ids.begin() + 500), 300);
  Config c = token_config(path("train_*.bin"), path("val_*.bin"), 300);
  c.mutable_model()->set_d_model(32);
  c.mutable_train()->set_steps(200);
  c.mutable_train()->set_batch(8);
  c.mutable_train()->set_lr(0.02f);
  c.mutable_train()->set_warmup_steps(5);
  c.mutable_train()->set_eval_interval(0);
  Trainer t(c, TrainOptions{});
  const TrainResult r = t.run();
  EXPECT_NEAR(r.first_loss, std::log(300.0), 0.2);
  EXPECT_LT(r.final_val_loss, 0.5 * r.first_loss);
}

}  // namespace
}  // namespace sy
