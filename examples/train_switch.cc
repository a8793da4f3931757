// train_switch: train a Switchyard model from a text-format config.
//
//   build/bin/train_switch --config configs/tiny.pbtxt [--set k=v ...] [--metrics out.jsonl]
//
// Exit codes: 0 done, 2 bad input (config, override, data file), 1 any other error.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "runtime/trainer.h"

int main(int argc, char** argv) {
  CLI::App app{"Train a Switchyard model"};
  std::string config_path, metrics_path;
  std::vector<std::string> overrides;
  int threads = 1;
  app.add_option("--config", config_path, "text-format config (configs/*.pbtxt)")->required();
  app.add_option("--set", overrides, "override a field: path.to.field=value (repeatable)");
  app.add_option("--metrics", metrics_path, "write one JSON line per logged step here");
  app.add_option("--threads", threads, "OpenBLAS threads for the CPU backend")->check(CLI::Range(1, 1024));
  CLI11_PARSE(app, argc, argv);

  try {
    openblas_set_num_threads(threads);
    sy::Config cfg = sy::load_config(config_path, overrides);
    std::cout << "switchyard: backend cpu (" << threads << " thread" << (threads > 1 ? "s" : "")
              << "), config " << config_path << "\n";
    sy::Trainer trainer(cfg, {metrics_path, &std::cout});
    sy::TrainResult r = trainer.run();
    std::cout << "done: loss " << r.first_loss << " -> " << r.final_loss << ", val "
              << r.final_val_loss << "\n";
  } catch (const sy::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
