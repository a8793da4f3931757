// A new run from another run's checkpoint (runtime/checkpoint.h:
// init_from_checkpoint): the same model's weights, or a dense model's
// upcycled into this config's experts.
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "runtime/checkpoint.h"
#include "runtime/checkpoint_stager.h"
#include "runtime/moe_layer.h"

namespace sy {
namespace {

namespace fs = std::filesystem;
using switchyard::CheckpointManifest;

// The dense FFN parameter an expert parameter starts as:
// "h1.moe.experts.w1" -> "h1.mlp.fc1.w" (runtime/grouped_experts.cc's
// names; runtime/layers.cc's Mlp: fc1 (C, P) with P = H, or 2H for SwiGLU's
// gate|up in the experts' order, fc2 (H, C)).
std::string dense_source(const std::string& expert_param) {
  static const std::pair<std::string, std::string> kMap[] = {{".moe.experts.w1", ".mlp.fc1.w"},
                                                             {".moe.experts.b1", ".mlp.fc1.b"},
                                                             {".moe.experts.w2", ".mlp.fc2.w"},
                                                             {".moe.experts.b2", ".mlp.fc2.b"}};
  for (const auto& [from, to] : kMap)
    if (expert_param.size() > from.size() &&
        expert_param.compare(expert_param.size() - from.size(), from.size(), from) == 0)
      return expert_param.substr(0, expert_param.size() - from.size()) + to;
  throw Error("upcycling: expert parameter " + expert_param + " has no dense counterpart");
}

// A copy of the dense FFN is that FFN only at its width, and only where no
// other FFN adds to the layer's output.
void check_upcycle(const Config& cfg, const CheckpointManifest& m, const std::string& dir) {
  check_compatible(cfg, m, dir, CheckpointUse::upcycle);
  const std::string from = "upcycling " + dir + " copies each layer's dense FFN";
  if (cfg.moe().shared_expert())
    throw ConfigError("moe.shared_expert = true: " + from +
                      " into its routed experts; a shared expert has no counterpart there (must be false)");
  const int64_t H = cfg.model().ffn_hidden();
  std::string widths;
  bool other = false;
  for (int64_t h : expert_hidden_sizes(cfg.moe(), H)) {
    widths += (widths.empty() ? "" : ", ") + std::to_string(h);
    other = other || h != H;
  }
  if (other)
    throw ConfigError("moe.expert_hidden = [" + widths + "]: " + from + " (model.ffn_hidden = " + std::to_string(H) +
                      ") into every expert, so each must be that wide (empty or 0)");
}

}  // namespace

InitFrom init_from_checkpoint(const std::string& dir, const Config& cfg, Transformer& model, ParallelContext* par) {
  // Recorded absolute: the run's checkpoints may be read from elsewhere.
  std::error_code ec;
  const fs::path abs = fs::weakly_canonical(dir, ec);
  const std::string where = ec ? dir : abs.string();
  CheckpointManifest m;
  bool upcycle = false;
  run_agreed(par, [&] {
    m = read_manifest(dir);
    upcycle = cfg.moe().num_experts() > 0 && m.config().moe().num_experts() == 0;
  });
  if (!upcycle) {  // the same model (load_checkpoint checks it): its weights, a fresh optimizer
    const TrainState st = load_checkpoint(dir, cfg, model, par, /*optimizer=*/false, CheckpointUse::init_from);
    return {{where, st.step, false}, st.data_position};
  }
  run_agreed(par, [&] {
    if (par && par->rank() != 0) return;
    check_upcycle(cfg, m, dir);
    verify_checkpoint(dir, m);
  });
  ckpt::Stager st(dir, m);
  std::vector<std::pair<bool*, bool>> flags;
  run_agreed(par, [&] {
    for (Param* p : model.params().all()) {
      if (p->expert()) {  // this rank's experts, each the layer's dense FFN
        const std::string src = dense_source(p->name);
        for (int64_t i = 0; i < p->local_rows(); ++i)
          st.need(src, p->row_shape(p->row_begin + i), p->local_row(p->value, i));
      } else if (p->name.find(".moe.router.") == std::string::npos) {
        st.need(p->name, p->shape, p->value);  // (any other MoE weight: refused as missing)
      }  // else a router's weights: no counterpart, this model's init
    }
    ckpt::stage_centroids(st, model, m, dir, flags);
  });
  for (auto& [dst, src] : st.staged()) dst.copy_from(src, model.ctx());
  model.params().refresh_shadows(model.ctx());
  for (auto& [flag, v] : flags) *flag = v;
  return {{where, m.step(), true}, m.data_position()};
}

}  // namespace sy
