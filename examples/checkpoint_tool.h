// What the checkpoint tools share (sample, route_report, export_hf): their
// checkpoint options (the parse step: examples/cli.h) and the model loaded
// for evaluation on the CPU.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

#include "examples/cli.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/model.h"

namespace sy {

// --checkpoint DIR|latest (required) and --checkpoint-dir, where 'latest'
// is looked up (runtime/checkpoint_store.h's resolve_checkpoint).
inline void add_checkpoint_options(CLI::App& app, std::string& spec, std::string& root) {
  app.add_option("--checkpoint", spec, "a checkpoint directory, or 'latest' in --checkpoint-dir")->required();
  app.add_option("--checkpoint-dir", root, "where 'latest' is looked up (train.checkpoint_dir)");
}

// A checkpoint's model on the host, in evaluation mode: its weights and
// routing state (not the optimizer's), at expert_parallel 1 whatever size
// wrote it, without gradients or moments (4 bytes a parameter; 6 with a
// bf16 checkpoint's shadows). `edit` sees the checkpoint's config first (checks, overrides
// that change no parameter).
struct EvalModel {
  std::string dir;
  Config cfg;
  std::unique_ptr<Transformer> model;
};
inline EvalModel load_eval_model(const std::string& dir, const std::function<void(Config&)>& edit = {}) {
  EvalModel m{dir, read_manifest(dir).config(), nullptr};
  if (edit) edit(m.cfg);
  m.cfg.mutable_parallel()->set_expert_parallel(1);
  m.model = std::make_unique<Transformer>(host_ctx(), m.cfg, nullptr, /*inference_only=*/true);
  load_checkpoint(dir, m.cfg, *m.model, nullptr, /*optimizer=*/false);
  m.model->set_training(false);
  return m;
}

}  // namespace sy
