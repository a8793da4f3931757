// sample: generate text from a checkpoint, on the CPU, and report where the
// generated tokens were routed (per MoE layer the expert load and the share
// dropped over capacity, per depth-routed block the share it processed).
//
//   build/bin/sample --checkpoint checkpoints/step_00001000 --prompt "ROMEO:" --tokens 300 \
//                    --temperature 0.8 --top-k 40 --seed 1
//   build/bin/sample --checkpoint latest ...     (latest in --checkpoint-dir, default checkpoints)
//
// Loads the weights and the routing state (not the optimizer state) at
// expert_parallel 1, whatever the size the checkpoint was written at, and
// runs the model in fp32 whatever precision it trained in (a checkpoint holds
// fp32 weights): token by token with a key/value cache where the config
// allows (runtime/generate.h kv_cacheable; --no-kv-cache: the window again
// for every token), else with a note saying why not.
// A model trained on token shards encodes the prompt and decodes its output
// through the SentencePiece model its config names (data.tokenizer, relative
// to the working directory) or --tokenizer, read by runtime/piece_codec.h;
// byte-level models need none. Where the config names a data.bos_id (an
// imported Mixtral's <s>) or --bos says, that token comes before the prompt;
// where it names a data.eos_id (</s>) or --eos says, generation stops after
// drawing that token.
// runtime/generate.h describes the generation. Exit codes: 0 done, 2 bad input
// (a checkpoint that is missing, corrupt or partial: one line naming the file
// and the tensor), 1 any other error.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "core/utf8.h"
#include "examples/checkpoint_tool.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/generate.h"
#include "runtime/startup.h"
#include "runtime/piece_codec.h"
#include "runtime/run_tool.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Generate text from a Switchyard checkpoint"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string spec, root = "checkpoints", prompt, tokenizer;
  int tokens = 200, threads = 1;
  sy::ops::SamplingParams sp;
  uint64_t seed = 1;
  bool no_kv_cache = false;
  sy::add_checkpoint_options(app, spec, root);
  app.add_option("--prompt", prompt, "the text to continue (default: a newline)");
  app.add_option("--tokens", tokens, "tokens (bytes for a byte-level model) to generate")->check(CLI::Range(1, 1000000));
  app.add_option("--temperature", sp.temperature, "softmax temperature; 0 is greedy")->check(sy::FiniteRange(0, 100));
  app.add_option("--top-k", sp.top_k, "draw from the k most probable tokens only; 0: all")->check(CLI::Range(0, 1 << 20));
  app.add_option("--tokenizer", tokenizer, "the SentencePiece .model to decode with (default: the config's data.tokenizer)");
  app.add_option("--seed", seed, "seed of the draws")->check(sy::Unsigned64());
  app.add_option("--threads", threads, "OpenBLAS threads")->check(CLI::Range(1, 1024));
  int bos = -2, eos = -2;  // (the config's data.bos_id, data.eos_id)
  app.add_option("--bos", bos, "a token id to put before the prompt (default: the config's data.bos_id; -1: none)")
      ->check(CLI::Range(-1, 1 << 30))
      ->default_str("");  // (-2 is "not given", said in words)
  app.add_option("--eos", eos, "a token id after which generation stops (default: the config's data.eos_id; -1: none)")
      ->check(CLI::Range(-1, 1 << 30))
      ->default_str("");
  app.add_flag("--no-kv-cache", no_kv_cache, "run the model on the whole window for every token (no key/value cache)");
  if (const int rc = sy::parse_options(app, argc, argv); rc >= 0) return rc;
  // (Logits are divided by it: below this, 1 / T overflows a float's range
  // on the logits' scale, and the draw is greedy in all but name.)
  if (sp.temperature > 0 && sp.temperature < 1e-3f)
    throw sy::ConfigError("--temperature " + std::to_string(sp.temperature) +
                          ": must be 0 (greedy) or at least 0.001");
  openblas_set_num_threads(threads);
  const sy::EvalModel loaded = sy::load_eval_model(
      sy::resolve_checkpoint(spec, root), [](sy::Config& c) { c.set_precision(switchyard::Config::FP32); });
  const std::string& dir = loaded.dir;
  const sy::Config& cfg = loaded.cfg;
  sy::Transformer& model = *loaded.model;
  std::string why;
  if (!sy::causal(cfg, &why))
    std::cerr << "note: generation sees padding after each position: " << why << "\n";
  else if (!no_kv_cache && !sy::kv_cacheable(cfg, &why))
    std::cerr << "note: no key/value cache (each token runs the model on the whole window): " << why << "\n";
  if (tokenizer.empty()) tokenizer = cfg.data().tokenizer();
  const int V = cfg.model().vocab_size();
  if (tokenizer.empty() && V != 256)
    throw sy::ConfigError(dir + ": model.vocab_size = " + std::to_string(V) +
                          " (token ids, not bytes) and the config names no data.tokenizer; pass --tokenizer FILE.model");
  const std::string bos_from = bos == -2 ? "data.bos_id = " : "--bos ";  // (for a refusal's line)
  const std::string eos_from = eos == -2 ? "data.eos_id = " : "--eos ";
  if (bos == -2) bos = cfg.data().bos_id();
  if (eos == -2) eos = cfg.data().eos_id();
  if (tokenizer.empty() && bos >= 0)
    throw sy::ConfigError(bos_from + std::to_string(bos) + ": " + dir + " is a byte-level model (no bos token)");
  if (tokenizer.empty() && eos >= 0)
    throw sy::ConfigError(eos_from + std::to_string(eos) + ": " + dir + " is a byte-level model (no eos token)");
  int generated = tokens;
  bool stopped = false;
  sy::GenerationRouting routing;
  std::string text;
  if (tokenizer.empty()) {
    text = sy::generate(model, cfg, prompt, tokens, sp, seed, &routing, !no_kv_cache);
  } else {
    std::error_code ec;
    if (const std::string kind = sy::not_a_regular_file(tokenizer); !kind.empty())
      throw sy::ConfigError("tokenizer " + tokenizer + ": " + kind +
                            (kind == "no such file" ? " (data.tokenizer is relative to the directory training ran in; "
                                                      "pass --tokenizer FILE.model)"
                                                    : " (--tokenizer takes a SentencePiece .model file)"));
    const sy::PieceCodec tok = sy::PieceCodec::load(tokenizer);
    if (tok.vocab_size() > V)
      throw sy::ConfigError("tokenizer " + tokenizer + ": " + std::to_string(tok.vocab_size()) +
                            " pieces, more than the model's model.vocab_size = " + std::to_string(V));
    if (tok.vocab_size() < V) {  // (a vocabulary padded past the tokenizer's: ids no piece decodes)
      sp.vocab = tok.vocab_size();
      std::cerr << "note: model.vocab_size = " << V << ", the tokenizer has " << tok.vocab_size()
                << " pieces: ids " << tok.vocab_size() << " and up are never drawn\n";
    }
    if (bos >= tok.vocab_size())
      throw sy::ConfigError(bos_from + std::to_string(bos) + ": tokenizer " + tokenizer + " has " +
                            std::to_string(tok.vocab_size()) + " pieces");
    if (eos >= tok.vocab_size())
      throw sy::ConfigError(eos_from + std::to_string(eos) + ": tokenizer " + tokenizer + " has " +
                            std::to_string(tok.vocab_size()) + " pieces");
    // (A byte that is not UTF-8 would be split into pieces SentencePiece
    // never makes: a prompt the model was not trained to read.)
    if (const std::string bad = sy::utf8_problem(prompt); !bad.empty())
      throw sy::ConfigError("--prompt: " + bad + ": tokenizer " + tokenizer + " takes UTF-8 text");
    const std::vector<int32_t> context = sy::prompt_ids(tok, prompt, bos);
    const std::vector<int32_t> ids =
        sy::generate_ids(model, cfg, context, tokens, sp, seed, &routing, !no_kv_cache, eos);
    generated = static_cast<int>(ids.size() - context.size());
    stopped = generated > 0 && ids.back() == eos;
    text = tok.decode(ids);
  }
  std::cout << text << "\n";
  std::cout << "--- " << generated << (tokenizer.empty() ? " bytes" : " tokens")
            << (stopped ? " (stopped at the end token " + std::to_string(eos) + ")" : "") << " from " << dir
            << " (temperature " << sp.temperature << ", top-k " << sp.top_k << ", seed " << seed
            << "); where they were routed:\n";
  char b[64];
  for (const auto& m : routing.moe) {
    int64_t assigned = 0, top = 0;
    for (int64_t n : m.load) assigned += n, top = std::max(top, n);
    std::cout << "  h" << m.layer << " moe   expert load";
    for (int64_t n : m.load) {
      std::snprintf(b, sizeof b, " %.2f", assigned ? static_cast<double>(n) / assigned : 0.0);
      std::cout << b;
    }
    std::snprintf(b, sizeof b, " | max/mean %.2f | dropped %.3f",
                  assigned ? static_cast<double>(top) * m.load.size() / assigned : 0.0,
                  assigned ? static_cast<double>(m.dropped) / assigned : 0.0);
    std::cout << b << " (" << m.tokens << " tokens)\n";
  }
  for (const auto& d : routing.depth) {
    std::snprintf(b, sizeof b, "%.2f", d.tokens ? static_cast<double>(d.kept) / d.tokens : 0.0);
    std::cout << "  h" << d.layer << " depth kept " << b << " (" << d.kept << " of " << d.tokens << ")\n";
  }
  if (routing.moe.empty() && routing.depth.empty()) std::cout << "  (a dense model: nothing is routed)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return sy::run_tool([&] { return run(argc, argv); });
}
