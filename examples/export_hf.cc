// export_hf: a checkpoint of a Mixtral-shaped model (RoPE, RMSNorm, SwiGLU
// experts in every block, top-k renormalised softmax routing, no biases) to a
// Hugging Face Mixtral directory: config.json and model.safetensors (f32 or
// bf16). docs/export_hf.md has the tensor mapping; runtime/hf_mixtral.h the
// code.
//
//   build/bin/export_hf --checkpoint checkpoints/step_00001000 --out mixtral_tiny_hf [--dtype bf16]
//   build/bin/export_hf --checkpoint latest --checkpoint-dir checkpoints --out DIR --verify "ROMEO:"
//
// --verify TEXT: after writing, reads the export back with an independent
// forward in Hugging Face's conventions (examples/hf_mixtral_reference.h) and compares its
// logits on TEXT (repeated to seq_len bytes) with this model's; prints the
// largest difference; exits 1 if an f32 export differs by more than 1e-4 of
// the largest logit. Exit codes: 0 done, 2 bad input (a checkpoint that is
// missing, corrupt, or not expressible as Mixtral: one line naming the field;
// an --out that exists), 1 any other error.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "examples/checkpoint_tool.h"
#include "examples/hf_mixtral_reference.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/hf_mixtral.h"
#include "runtime/run_tool.h"
#include "runtime/startup.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"Export a Switchyard checkpoint to the Hugging Face Mixtral layout"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string spec, root = "checkpoints", out, dtype = "f32", verify;
  bool do_verify = false;
  sy::add_checkpoint_options(app, spec, root);
  app.add_option("--out", out, "the directory to create (must not exist)")->required();
  app.add_option("--dtype", dtype, "f32 or bf16 (round to nearest even)")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--verify", verify, "compare the export's logits with the model's on this text")
      ->each([&](const std::string&) { do_verify = true; });
  if (const int rc = sy::parse_options(app, argc, argv); rc >= 0) return rc;
  if (out.empty()) throw sy::ConfigError("--out \"\": empty; name the directory to create");
  openblas_set_num_threads(1);
  const std::string dir = sy::resolve_checkpoint(spec, root);
  const sy::EvalModel loaded = sy::load_eval_model(dir, [&](sy::Config& c) {
    sy::check_mixtral_expressible(c, sy::join_path(dir, "manifest.pbtxt"));
    for (const std::string& n : sy::mixtral_export_notes(c)) std::cerr << "note: " << n << "\n";
    c.mutable_moe()->set_dropless(true);  // what Mixtral computes (no parameter depends on it)
  });
  const sy::Config& cfg = loaded.cfg;
  sy::Transformer& model = *loaded.model;
  const sy::DType dt = dtype == "bf16" ? sy::DType::bf16 : sy::DType::f32;
  const auto files = sy::write_mixtral_export(out, cfg, model, dt, dir);
  std::cout << "wrote " << out << ":";
  for (const auto& f : files) std::cout << " " << f;
  std::cout << " (" << dtype << ", " << cfg.model().n_layers() << " layers, " << cfg.moe().num_experts()
            << " experts top-" << cfg.moe().top_k() << ", from " << dir << ")\n";
  if (!do_verify) return 0;

  const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size();
  if (verify.empty()) verify = "\n";
  sy::Batch b;
  // The text's bytes as token ids (modulo V for a vocabulary under 256): the
  // check compares two forwards on the same ids, whatever they mean.
  for (int64_t t = 0; t < T; ++t) {
    b.inputs.push_back(static_cast<unsigned char>(verify[t % verify.size()]) % V);
    b.targets.push_back(static_cast<unsigned char>(verify[(t + 1) % verify.size()]) % V);
  }
  model.forward(b);
  const std::vector<float> ours = model.logits().to_vector<float>();
  const std::vector<float> theirs = sy::HfMixtralReference(out).logits(b.inputs);
  double diff = 0, top = 0;
  for (int64_t i = 0; i < T * V; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(ours[i]) - theirs[i]));
    top = std::max(top, std::fabs(static_cast<double>(ours[i])));
  }
  char line[200];
  std::snprintf(line, sizeof line, "verify: %lld x %lld logits, largest |logit| %.4g, largest difference %.3g (%.2g of it)",
                static_cast<long long>(T), static_cast<long long>(V), top, diff, diff / std::max(top, 1e-30));
  std::cout << line << "\n";
  if (dt == sy::DType::f32 && diff > 1e-4 * std::max(top, 1.0)) {
    std::cerr << "error: the f32 export's logits differ from the model's by " << diff << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return sy::run_tool([&] { return run(argc, argv); });
}
