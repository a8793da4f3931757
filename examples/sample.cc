// sample: generate text from a checkpoint, on the CPU, and report where the
// generated tokens were routed (per MoE layer the expert load and the share
// dropped over capacity, per depth-routed block the share it processed).
//
//   build/bin/sample --checkpoint checkpoints/step_00001000 --prompt "ROMEO:" --tokens 300 \
//                    --temperature 0.8 --top-k 40 --seed 1
//   build/bin/sample --checkpoint latest ...     (latest in --checkpoint-dir, default checkpoints)
//
// Loads the weights and the routing state (not the optimizer state) at
// expert_parallel 1, whatever the size the checkpoint was written at.
// runtime/generate.h describes the generation. Exit codes: 0 done, 2 bad input
// (a checkpoint that is missing, corrupt or partial: one line naming the file
// and the tensor), 1 any other error.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/generate.h"
#include "runtime/startup.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Generate text from a Switchyard checkpoint"};
  std::string spec, root = "checkpoints", prompt;
  int tokens = 200, threads = 1;
  sy::ops::SamplingParams sp;
  uint64_t seed = 1;
  app.add_option("--checkpoint", spec, "a checkpoint directory, or 'latest' in --checkpoint-dir")->required();
  app.add_option("--checkpoint-dir", root, "where 'latest' is looked up (train.checkpoint_dir)");
  app.add_option("--prompt", prompt, "the text to continue (default: a newline)");
  app.add_option("--tokens", tokens, "bytes to generate")->check(CLI::Range(0, 1000000));
  app.add_option("--temperature", sp.temperature, "softmax temperature; 0 is greedy")->check(CLI::Range(0.f, 100.f));
  app.add_option("--top-k", sp.top_k, "draw from the k most probable bytes only; 0: all")->check(CLI::Range(0, 256));
  app.add_option("--seed", seed, "seed of the draws");
  app.add_option("--threads", threads, "OpenBLAS threads")->check(CLI::Range(1, 1024));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  openblas_set_num_threads(threads);
  const std::string dir = sy::resolve_checkpoint(spec, root);
  sy::Config cfg = sy::read_manifest(dir).config();
  cfg.mutable_parallel()->set_expert_parallel(1);
  sy::Transformer model(sy::host_ctx(), cfg);
  sy::load_checkpoint(dir, cfg, model, nullptr, /*optimizer=*/false);
  model.set_training(false);
  std::string why;
  if (!sy::causal(cfg, &why)) std::cerr << "note: generation sees padding after each position: " << why << "\n";

  sy::GenerationRouting routing;
  const std::string text = sy::generate(model, cfg, prompt, tokens, sp, seed, &routing);
  std::cout << text << "\n";
  std::cout << "--- " << tokens << " bytes from " << dir << " (temperature " << sp.temperature << ", top-k "
            << sp.top_k << ", seed " << seed << "); where they were routed:\n";
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
  try {
    return run(argc, argv);
  } catch (const sy::AgreedError& e) {  // a refused checkpoint
    std::cerr << "error: " << e.what() << std::endl;
    return e.exit_code();
  } catch (const sy::ConfigError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
}
