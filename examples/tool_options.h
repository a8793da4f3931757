// Command-line pieces the checkpoint tools share (sample, route_report).
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace sy {

// --checkpoint DIR|latest (required) and --checkpoint-dir, where 'latest'
// is looked up (runtime/checkpoint_store.h's resolve_checkpoint).
inline void add_checkpoint_options(CLI::App& app, std::string& spec, std::string& root) {
  app.add_option("--checkpoint", spec, "a checkpoint directory, or 'latest' in --checkpoint-dir")->required();
  app.add_option("--checkpoint-dir", root, "where 'latest' is looked up (train.checkpoint_dir)");
}

// Parses argv into app's options: -1 to go on, else the exit code (0 after
// --help, 2 for a usage error, with CLI11's message printed).
inline int parse_options(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return -1;
}

}  // namespace sy
