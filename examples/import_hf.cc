// import_hf: a Hugging Face Mixtral directory (config.json and
// model.safetensors, or shards with model.safetensors.index.json; F32,
// BF16 or F16) to a Switchyard checkpoint of weights only at step 0, which `sample`
// reads and `train_switch --init-from` fine-tunes (a new run from its
// weights; --resume refuses it: it has no optimizer state).
// runtime/hf_mixtral.h has the mapping (export_hf's, read backwards).
//
//   build/bin/import_hf --hf mixtral_hf --out imported [--config base.pbtxt] [--set model.seq_len=512]
//                       [--tokenizer mixtral_hf/tokenizer.model]
//
// The model and moe fields come from config.json; the rest (data, training,
// model.seq_len) from --config and --set (defaults without). A vocabulary
// other than bytes (vocab_size != 256) names its SentencePiece model in
// data.tokenizer (--tokenizer, default the directory's tokenizer.model where
// there is one; checked, recorded as an absolute path) for sample to decode
// with; a base config without token
// shards gets placeholder shard patterns (train_*.bin, val_*.bin), which a
// fine-tuning run's own --config replaces. Writes OUT/step_00000000 (OUT must
// not exist; nothing is left of it on failure). Exit codes: 0 done, 2 bad
// input (one line naming the file and the key or tensor), 1 any other error.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "examples/checkpoint_tool.h"
#include "runtime/checkpoint.h"
#include "runtime/hf_mixtral.h"
#include "runtime/output_file.h"
#include "runtime/piece_codec.h"
#include "runtime/run_tool.h"

namespace {

namespace fs = std::filesystem;

int run(int argc, char** argv) {
  CLI::App app{"Import a Hugging Face Mixtral directory as a Switchyard checkpoint"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string hf, out, config, tokenizer;
  std::vector<std::string> overrides;
  app.add_option("--hf", hf, "the Hugging Face model directory (config.json, model.safetensors)")->required();
  app.add_option("--out", out, "the checkpoint directory to create (must not exist); the checkpoint is OUT/step_00000000")
      ->required();
  app.add_option("--config", config, "a config for what config.json does not say (data, training, model.seq_len)");
  app.add_option("--set", overrides, "override a field of that config: path.to.field=value (repeatable)");
  app.add_option("--tokenizer", tokenizer, "the SentencePiece .model to record as data.tokenizer");
  if (const int rc = sy::parse_options(app, argc, argv); rc >= 0) return rc;
  openblas_set_num_threads(1);
  if (fs::exists(out)) throw sy::ConfigError(out + ": exists; the import writes a new checkpoint directory");
  // (Validated once whole: the base alone may name what the import replaces,
  // e.g. a data.path that a tokenized vocabulary's token files supersede.)
  sy::Config base = config.empty() ? sy::parse_config("", "defaults") : sy::read_config(config);
  for (const std::string& o : overrides) sy::apply_override(base, o);
  sy::Config cfg = sy::mixtral_config_from_json(hf, base);
  const int V = cfg.model().vocab_size();
  if (V == 256 && !tokenizer.empty())
    throw sy::ConfigError("--tokenizer " + tokenizer + ": " + hf + "'s vocab_size is 256, bytes (no tokenizer)");
  if (V != 256) {
    auto& d = *cfg.mutable_data();
    if (tokenizer.empty() && fs::is_regular_file(fs::path(hf) / "tokenizer.model"))
      tokenizer = (fs::path(hf) / "tokenizer.model").string();
    if (!tokenizer.empty()) {  // (checked now, recorded absolute: sample may run elsewhere)
      if (!fs::is_regular_file(tokenizer)) throw sy::ConfigError("--tokenizer " + tokenizer + ": no such file");
      const int pieces = sy::PieceCodec::load(tokenizer).vocab_size();
      if (pieces > V)
        throw sy::ConfigError("tokenizer " + tokenizer + ": " + std::to_string(pieces) + " pieces, more than " + hf +
                              "'s vocab_size = " + std::to_string(V));
      d.set_tokenizer(fs::absolute(tokenizer).lexically_normal().string());
    }
    if (d.source() != switchyard::DataConfig::TOKEN_FILES) {
      d.set_source(switchyard::DataConfig::TOKEN_FILES);
      d.clear_path();
      d.set_token_files("train_*.bin");
      d.set_val_token_files("val_*.bin");
    }
  }
  // An override the import replaced (config.json decides the model's shape;
  // a tokenized vocabulary the data's source) or cut (model.seq_len to
  // max_position_embeddings) is refused, not dropped without a word.
  const std::string imported = sy::canonical_config_text(cfg);
  for (const std::string& o : overrides) {
    sy::Config probe = cfg;
    sy::apply_override(probe, o);
    const sy::FieldDifference d = sy::first_difference(imported, sy::canonical_config_text(probe));
    if (d.field.empty()) continue;
    const bool data = d.field.rfind("data.", 0) == 0;
    throw sy::ConfigError(
        "--set " + o + ": the import sets " + d.field + " = " + d.a +
        (data ? std::string(" (a tokenized vocabulary reads token files: set data.source=TOKEN_FILES with them)")
              : " from " + (fs::path(hf) / "config.json").string() +
                    (d.field == "model.seq_len" ? " (at most its max_position_embeddings)" : "") +
                    "; drop the override"));
  }
  // A seq_len the base file sets and the import cut (overrides were refused above).
  if (base.model().has_seq_len() && base.model().seq_len() != cfg.model().seq_len())
    throw sy::ConfigError("--config " + config + ": model.seq_len = " + std::to_string(base.model().seq_len()) +
                          ": " + (fs::path(hf) / "config.json").string() + " allows at most its " +
                          "max_position_embeddings = " + std::to_string(cfg.model().seq_len()) + "; lower it");
  sy::validate_config(cfg, fs::path(hf).append("config.json").string() + " over " +
                               (config.empty() ? std::string("the defaults") : config) +
                               (overrides.empty() ? "" : " with --set overrides"));
  sy::check_mixtral_weights(hf, cfg);  // (the headers, before the model takes its memory)
  sy::Transformer model(sy::host_ctx(), cfg, nullptr, /*inference_only=*/true);  // (a checkpoint of weights only)
  sy::load_mixtral_weights(hf, cfg, model);
  std::string dir;
  sy::make_output_dir("--out", out);  // (named as the import's option, not as a training field)
  try {
    dir = sy::save_checkpoint(out, cfg, model, sy::TrainState{}, nullptr, 1);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(out, ec);
    throw;
  }
  const auto& m = cfg.model();
  if (const std::string note = sy::mixtral_window_note(hf, base, cfg); !note.empty())
    std::cerr << "note: " << note << "\n";
  if (const std::string note = sy::untrained_router_note(cfg); !note.empty())
    std::cerr << "note: " << note << " (in fine-tuning)\n";
  std::cout << "imported " << hf << " (" << m.n_layers() << " layers, d_model " << m.d_model() << ", "
            << cfg.moe().num_experts() << " experts top-" << cfg.moe().top_k() << ", vocabulary " << m.vocab_size()
            << ", model.seq_len " << m.seq_len() << ", " << model.params().numel() << " parameters) to " << dir << "\n"
            << "  sample:    build/bin/sample --checkpoint " << dir << "\n"
            << "  fine-tune: build/bin/train_switch --config YOURS.pbtxt --init-from " << dir << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return sy::run_tool([&] { return run(argc, argv); });
}
