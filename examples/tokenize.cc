// tokenize: text files -> a SentencePiece BPE tokenizer and token shards
// that data.source TOKEN_FILES trains on (runtime/token_shard.h).
//
//   build/bin/tokenize --input a.txt --input b.txt --vocab-size 2048 --out data/tok
//   build/bin/tokenize --input c.txt --model data/tok/tokenizer.model --out data/tok2
//   build/bin/tokenize --input d.txt --model mixtral_hf/tokenizer.model --bos 1 --eos 2 --out data/mix
//                      (each input's tokens between <s> and </s>, as an imported Mixtral was trained)
//
// Trains a tokenizer on the inputs (runtime/tokenizer.h has the recipe) or
// loads an existing .model, encodes the inputs in order and writes, in --out:
//   tokenizer.model      the tokenizer (a copy of --model when given)
//   train_NNNNNN.bin     each input's head, in order, --shard-tokens per shard
//   val_NNNNNN.bin       each input's tail, a --val-fraction of its tokens
//                        (a share under 256 tokens carried to the next input)
// Every file is first written into a staging directory (--out/.tokenize.tmp)
// and only when all of them are complete renamed into place, and stale
// shards of an earlier run removed, so a failed run (a full disk) leaves
// --out as it was and a training glob never mixes two tokenizations. An
// existing non-empty output is refused unless --overwrite; an output that is
// one of the inputs (--input, --model) is refused even then.
// Exit codes: 0 done, 2 bad input (one line naming it), 1 any other error.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include "core/error.h"
#include "core/file.h"
#include "examples/cli.h"
#include "runtime/output_file.h"
#include "runtime/run_tool.h"
#include "runtime/token_shard.h"
#include "runtime/tokenizer.h"

namespace fs = std::filesystem;

namespace {

std::string read_text(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw sy::ConfigError("--input " + path + ": " +
                          (fs::is_directory(path, ec) ? "is a directory"
                           : fs::exists(path, ec)     ? "is not a regular file"
                                                      : "no such file"));
  try {
    return sy::read_whole_file(path, "the text");
  } catch (const sy::ConfigError& e) {
    throw sy::ConfigError(std::string("--input ") + e.what());
  }
}

// Refused before any work: SentencePiece would encode a byte that is not
// UTF-8 as U+FFFD, and the shards would decode to another text.
void check_utf8(const std::string& path, const std::string& text) {
  if (const std::string bad = sy::utf8_problem(text); !bad.empty())
    throw sy::ConfigError("--input " + path + ": " + bad +
                          ": the tokenizer takes UTF-8 text (convert it first, e.g. iconv -f latin1 -t utf-8)");
}

// Encodes in pieces of about 1 MiB cut after a newline (or, in a longer
// line, between characters): memory stays bounded by the piece, and decoding
// the ids still gives the text back.
void encode_into(const sy::Tokenizer& tok, const std::string& text, std::vector<uint32_t>& ids) {
  const size_t piece = 1 << 20;
  for (size_t s = 0; s < text.size();) {
    const size_t e = sy::text_piece_end(text, s, piece);
    const std::vector<uint32_t> part = tok.encode(text.substr(s, e - s));
    ids.insert(ids.end(), part.begin(), part.end());
    s = e;
  }
}

// What this tool writes into --out (and the temporary names of older
// versions that wrote in place): the files an earlier run may have left.
bool is_output_name(const std::string& name) {
  const auto ends = [&](const char* suf) {
    const size_t n = std::strlen(suf);
    return name.size() >= n && name.compare(name.size() - n, n, suf) == 0;
  };
  return ((name.rfind("train_", 0) == 0 || name.rfind("val_", 0) == 0) && (ends(".bin") || ends(".bin.tmp"))) ||
         name == "tokenizer.model" || name == "tokenizer.model.tmp";
}

std::string shard_path(const std::string& dir, const char* split, size_t i) {
  char b[32];
  std::snprintf(b, sizeof b, "%s_%06zu.bin", split, i);
  return (fs::path(dir) / b).string();
}

// Writes ids[begin, end) as shards of at most per_shard ids; returns their count.
size_t write_split(const std::string& dir, const char* split, const std::vector<uint32_t>& ids, size_t begin,
                   size_t end, size_t per_shard, uint32_t vocab) {
  size_t n = 0;
  for (size_t s = begin; s < end; s += per_shard, ++n)
    sy::write_token_shard(shard_path(dir, split, n),
                          std::vector<uint32_t>(ids.begin() + s, ids.begin() + std::min(end, s + per_shard)), vocab);
  return n;
}

int run(int argc, char** argv) {
  CLI::App app{"Train or load a SentencePiece BPE tokenizer and write token shards"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::vector<std::string> inputs;
  std::string out, model;
  int vocab_size = 2048, threads = 1;
  double val_fraction = 0.1;
  int64_t shard_tokens = 100000000;
  bool overwrite = false;
  app.add_option("--input", inputs, "text file(s) to tokenize (and train the tokenizer on)")->required();
  app.add_option("--out", out, "directory for tokenizer.model and the shards")->required();
  app.add_option("--vocab-size", vocab_size, "pieces of a trained tokenizer (256 byte pieces and 3 control ids included)")
      ->check(CLI::Range(260, 1 << 20));
  app.add_option("--model", model, "an existing SentencePiece .model to use instead of training one")
      ->excludes("--vocab-size");  // (its pieces are the model's)
  app.add_option("--val-fraction", val_fraction, "tail of each input's tokens held out for validation")
      ->check(CLI::Range(1e-6, 0.5));
  app.add_option("--shard-tokens", shard_tokens, "tokens per shard at most")->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--threads", threads, "tokenizer training threads")->check(CLI::Range(1, 1024));
  app.add_flag("--overwrite", overwrite, "replace the shards and tokenizer already in --out");
  int64_t bos = -1, eos = -1;
  app.add_option("--bos", bos,
                 "a token id to put before each input's tokens (a model trained to see one first: Mixtral's <s> "
                 "is 1; train with data.bos_id set to it)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 31));
  app.add_option("--eos", eos,
                 "a token id to put after each input's tokens (Mixtral's </s> is 2; train with data.eos_id set to it)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 31));
  if (const int rc = sy::parse_options(app, argc, argv); rc >= 0) return rc;

  // --bos and --eos against the vocabulary, before anything is written or trained.
  std::optional<sy::Tokenizer> given;
  if (!model.empty()) given.emplace(sy::Tokenizer::load(model));
  const int64_t pieces = given ? given->vocab_size() : vocab_size;
  for (const auto& [flag, id] : {std::pair<const char*, int64_t>{"--bos", bos}, {"--eos", eos}})
    if (id >= pieces)
      throw sy::ConfigError(std::string(flag) + " " + std::to_string(id) + ": the tokenizer " +
                            (given ? model : "to train") + " has " + std::to_string(pieces) + " pieces" +
                            (given ? "" : " (--vocab-size)"));
  std::vector<std::string> texts;
  size_t bytes = 0;
  for (const std::string& in : inputs) texts.push_back(read_text(in)), bytes += texts.back().size();
  if (bytes == 0) throw sy::ConfigError("--input " + inputs.front() + (inputs.size() > 1 ? " ..." : "") + ": empty");

  // Refuse before any work if --out already holds outputs (of this or an
  // earlier run: every one is replaced or removed) that would be lost.
  std::error_code ec;
  const bool made_out = !fs::exists(out, ec);
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out))
    throw sy::ConfigError("--out " + out + ": cannot create the directory" + (ec ? ": " + ec.message() : ""));
  // A failure before the outputs are in place leaves no directory this run
  // made (it is empty then: the staging directory goes first).
  struct Unmake {
    const std::string& dir;
    bool armed;
    ~Unmake() {
      std::error_code e;
      if (armed) fs::remove(dir, e);  // (only if empty)
    }
  } unmake{out, made_out};
  std::vector<std::pair<std::string, std::string>> sources;
  for (const std::string& in : inputs) sources.emplace_back("--input", in);
  sources.emplace_back("--model", model);
  std::vector<fs::path> old;
  for (const auto& e : fs::directory_iterator(out))
    if (is_output_name(e.path().filename().string())) old.push_back(e.path());
  std::sort(old.begin(), old.end());
  for (const fs::path& p : old) sy::check_output_path("--out", p.string(), sources, overwrite);
  for (size_t i = 0; i < inputs.size(); ++i) check_utf8(inputs[i], texts[i]);

  sy::Tokenizer tok = [&] {
    if (given) return std::move(*given);
    sy::TokenizerTraining t;
    t.vocab_size = vocab_size;
    t.threads = threads;
    t.texts = texts;
    std::cout << "tokenize: training a " << vocab_size << "-piece BPE tokenizer on " << bytes << " bytes\n"
              << std::flush;
    return sy::Tokenizer::train(t);
  }();
  const uint32_t vocab = static_cast<uint32_t>(tok.vocab_size());

  // Each input's tail is held out, so that validation covers every input
  // (a corpus of several sources, or of files in some order, is measured
  // on all of them, not on the end of the last): ids holds the training
  // tokens, then the validation tokens from `split` on. An input whose
  // share is under kMinTail tokens passes it on to the next (the last takes
  // what is owed), so that many small files give held-out runs, not scraps
  // of a token or two (at --val-fraction 0.01 a file of 80 tokens owes 0.8);
  // in all, as before, a --val-fraction of the tokens.
  constexpr double kMinTail = 256;
  std::vector<uint32_t> ids, val_ids;
  double owed = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    std::vector<uint32_t> part;
    if (bos >= 0) part.push_back(static_cast<uint32_t>(bos));
    encode_into(tok, texts[i], part);
    if (eos >= 0) part.push_back(static_cast<uint32_t>(eos));
    owed += static_cast<double>(part.size()) * val_fraction;
    size_t tail = 0;
    if (owed >= kMinTail || i + 1 == texts.size()) tail = std::min(part.size(), static_cast<size_t>(owed));
    owed -= static_cast<double>(tail);
    ids.insert(ids.end(), part.begin(), part.end() - tail);
    val_ids.insert(val_ids.end(), part.end() - tail, part.end());
  }
  const size_t split = ids.size(), n_val = val_ids.size();
  ids.insert(ids.end(), val_ids.begin(), val_ids.end());
  val_ids = {};
  if (n_val == 0 || split == 0)
    throw sy::ConfigError("--val-fraction " + std::to_string(val_fraction) + ": " + std::to_string(ids.size()) +
                          " tokens leave an empty split");

  // Everything into the staging directory first; any failure there removes
  // it and leaves --out as it was.
  const fs::path stage = fs::path(out) / ".tokenize.tmp";
  fs::remove_all(stage);
  fs::create_directory(stage);
  const size_t per = static_cast<size_t>(shard_tokens);
  size_t n_train = 0, n_val_shards = 0;
  try {
    const std::string staged_tok = (stage / "tokenizer.model").string();
    sy::write_file(staged_tok, tok.serialized());
    n_train = write_split(stage.string(), "train", ids, 0, split, per, vocab);
    n_val_shards = write_split(stage.string(), "val", ids, split, ids.size(), per, vocab);
  } catch (...) {
    fs::remove_all(stage, ec);
    throw;
  }
  // Complete: into place (replacing files of the same name), then what is
  // left of an earlier run (shards beyond this run's count) goes.
  std::vector<fs::path> wrote;  // file names
  for (const auto& e : fs::directory_iterator(stage)) wrote.push_back(e.path().filename());
  for (const fs::path& name : wrote) fs::rename(stage / name, fs::path(out) / name);
  fs::remove(stage);
  for (const fs::path& p : old)
    if (std::find(wrote.begin(), wrote.end(), p.filename()) == wrote.end()) fs::remove(p);
  unmake.armed = false;
  const std::string tok_path = (fs::path(out) / "tokenizer.model").string();

  // Bytes per token of each split, for converting a loss per token into
  // one per byte (nats/byte = nats/token * tokens / bytes).
  const std::string val_text = tok.decode(std::vector<int32_t>(ids.begin() + split, ids.end()));
  const double train_bytes = static_cast<double>(bytes - val_text.size());
  std::printf("tokenize: %zu bytes -> %zu tokens (%.3f bytes/token), vocabulary %u\n", bytes, ids.size(),
              static_cast<double>(bytes) / ids.size(), vocab);
  std::printf("  train: %zu tokens (%.0f bytes, %.3f bytes/token) in %zu shard%s\n", split, train_bytes,
              train_bytes / split, n_train, n_train == 1 ? "" : "s");
  std::printf("  val:   %zu tokens (%zu bytes, %.3f bytes/token) in %zu shard%s\n", n_val, val_text.size(),
              static_cast<double>(val_text.size()) / n_val, n_val_shards, n_val_shards == 1 ? "" : "s");
  std::printf("  wrote %s, %s/train_*.bin, %s/val_*.bin\n", tok_path.c_str(), out.c_str(), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return sy::run_tool([&] { return run(argc, argv); });
}
