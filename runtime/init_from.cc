// A new run from another run's checkpoint (runtime/checkpoint.h:
// init_from_checkpoint): the same model's weights, or a dense model's
// upcycled into this config's experts.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/philox.h"
#include "ops/random.h"
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

std::string text(float v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Hidden units each expert re-draws under train.upcycle_reinit r: round(r H).
int64_t reinit_units(float r, int64_t H) { return static_cast<int64_t>(std::floor(r * H + 0.5)); }

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
  const float r = cfg.train().upcycle_reinit();
  if (r > 0 && reinit_units(r, H) == 0)
    throw ConfigError("train.upcycle_reinit = " + text(r) + ": re-draws round(r x model.ffn_hidden = " +
                      std::to_string(H) + ") = 0 hidden units of each expert (must be 0, or at least " +
                      text(0.5f / H) + ")");
}

}  // namespace

std::string routing_changes(const Config& source, const Config& cfg) {
  const auto &a = source.moe(), &b = cfg.moe();
  if (a.num_experts() == 0 || b.num_experts() == 0) return "";
  std::ostringstream os;
  auto note = [&](const char* field, const std::string& was, const std::string& now) {
    if (was != now) os << (os.tellp() > 0 ? ", " : "") << field << " " << now << " (the source's " << was << ")";
  };
  auto flag = [](bool v) { return std::string(v ? "true" : "false"); };
  note("moe.top_k", std::to_string(a.top_k()), std::to_string(b.top_k()));
  note("moe.renormalize", flag(a.renormalize()), flag(b.renormalize()));
  note("moe.score_function", switchyard::MoeConfig::ScoreFunction_Name(a.score_function()),
       switchyard::MoeConfig::ScoreFunction_Name(b.score_function()));
  note("moe.dropless", flag(a.dropless()), flag(b.dropless()));
  // Expert choice's capacity factor is its mean experts a token (training
  // and evaluation); tokens choose's evaluation capacity, its floor and the
  // slot order decide what is dropped where neither side is dropless.
  const bool choice = b.router() == switchyard::MoeConfig::EXPERT_CHOICE;
  if (choice) note("moe.capacity_factor", text(a.capacity_factor()), text(b.capacity_factor()));
  if (!choice && !a.dropless() && !b.dropless()) {
    note("moe.capacity_factor_eval", text(a.capacity_factor_eval()), text(b.capacity_factor_eval()));
    note("moe.min_capacity", std::to_string(a.min_capacity()), std::to_string(b.min_capacity()));
    note("moe.slot_priority", switchyard::MoeConfig::SlotPriority_Name(a.slot_priority()),
         switchyard::MoeConfig::SlotPriority_Name(b.slot_priority()));
  }
  note("moe.expert_groups", std::to_string(a.expert_groups()), std::to_string(b.expert_groups()));
  note("moe.groups_per_token", std::to_string(a.groups_per_token()), std::to_string(b.groups_per_token()));
  note("moe.group_score_experts", std::to_string(a.group_score_experts()), std::to_string(b.group_score_experts()));
  note("moe.sinkhorn_at_eval", flag(a.sinkhorn_at_eval()), flag(b.sinkhorn_at_eval()));
  return os.str();
}

namespace {

// The block index of an expert parameter's layer: "h3.moe.experts.w1" -> 3.
int layer_of(const std::string& name) {
  SY_CHECK(name.size() > 1 && name[0] == 'h', "upcycling: parameter " << name << " names no block");
  return std::stoi(name.substr(1));
}

// Drop-Upcycling (Nakamura et al. 2025, "Drop-Upcycling: Training Sparse
// Mixture of Experts with Partial Re-initialization"): expert g of layer l
// re-draws hidden unit j when j is among the round(r H) smallest of H
// uniform keys (ties: the lower j), keyed by (seed, layer, g). Its w1
// column (both, gate and up, for SwiGLU) and its w2 row become mean + std
// N(0, 1) with the mean and standard deviation of the dense matrix they were
// copied from (each half of a SwiGLU fc1 on its own), its b1 entries 0 (the
// biases' init). Every draw is a function of (seed, layer, expert, element)
// alone (core/philox.h), so any expert-parallel size draws the same weights.
class DropUpcycle {
 public:
  explicit DropUpcycle(const Config& cfg) : seed_(cfg.train().seed()), ratio_(cfg.train().upcycle_reinit()) {
    H_ = cfg.model().ffn_hidden();
    gated_ = cfg.model().activation() == switchyard::ModelConfig::SWIGLU;
  }
  bool active() const { return ratio_ > 0; }

  // Expert g's row of the expert parameter `param` (w1, b1 or w2: b2 has no
  // hidden units), a host copy of the dense FFN's tensor, changed in place.
  void apply(const std::string& param, int64_t g, Tensor& t) const {
    const std::string kind = param.substr(param.size() - 2);
    float* v = t.data<float>();
    const std::vector<bool> redraw = units(layer_of(param), g);
    const int64_t P = gated_ ? 2 * H_ : H_;
    if (kind == "b1") {
      for (int64_t j = 0; j < H_; ++j)
        if (redraw[j])
          for (int64_t col = j; col < P; col += H_) v[col] = 0.f;
    } else if (kind == "w1") {  // (C, P): columns j (and H + j)
      const int64_t C = t.dim(0);
      const Tensor z = normals(layer_of(param), g, H_, C * P);
      for (int64_t half = 0; half < P / H_; ++half) {
        const auto [mean, std] = stats(v, C, P, half * H_, H_);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t j = 0; j < H_; ++j)
            if (redraw[j]) {
              const int64_t at = c * P + half * H_ + j;
              v[at] = mean + std * z.data<float>()[at];
            }
      }
    } else {  // w2 (H, C): row j
      SY_CHECK(kind == "w2", "upcycling: " << param << " has no hidden units to re-draw");
      const int64_t C = t.dim(1);
      const Tensor z = normals(layer_of(param), g, H_ + C * P, H_ * C);
      const auto [mean, std] = stats(v, H_, C, 0, C);
      for (int64_t j = 0; j < H_; ++j)
        if (redraw[j])
          for (int64_t c = 0; c < C; ++c) v[j * C + c] = mean + std * z.data<float>()[j * C + c];
    }
  }

 private:
  RandomKey key(int layer, int64_t g, uint64_t offset) const {
    return {seed_, random_stream(RandomPurpose::upcycle, layer), static_cast<uint32_t>(g), offset};
  }
  std::vector<bool> units(int layer, int64_t g) const {
    Tensor u = Tensor::empty({H_}, DType::f32, host_ctx());
    ops::random_uniform(host_ctx(), u, key(layer, g, 0), 0.f, 1.f);
    std::vector<int64_t> order(H_);
    for (int64_t j = 0; j < H_; ++j) order[j] = j;
    const float* k = u.data<float>();
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return k[a] < k[b]; });
    const int64_t n = reinit_units(ratio_, H_);
    std::vector<bool> redraw(H_, false);
    for (int64_t r = 0; r < n; ++r) redraw[order[r]] = true;
    return redraw;
  }
  Tensor normals(int layer, int64_t g, uint64_t offset, int64_t n) const {
    Tensor z = Tensor::empty({n}, DType::f32, host_ctx());
    ops::random_normal(host_ctx(), z, key(layer, g, offset), 1.f);
    return z;
  }
  // Mean and standard deviation of columns [c0, c0 + cols) of a (rows, ld)
  // matrix, in double.
  static std::pair<float, float> stats(const float* v, int64_t rows, int64_t ld, int64_t c0, int64_t cols) {
    double s = 0, s2 = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = c0; c < c0 + cols; ++c) s += v[r * ld + c], s2 += double(v[r * ld + c]) * v[r * ld + c];
    const double n = double(rows) * cols, mean = s / n;
    return {static_cast<float>(mean), static_cast<float>(std::sqrt(std::max(0.0, s2 / n - mean * mean)))};
  }
  uint64_t seed_;
  float ratio_;
  int64_t H_ = 0;
  bool gated_ = false;
};

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
    if (!upcycle && cfg.train().upcycle_reinit() > 0)
      throw ConfigError("train.upcycle_reinit = " + text(cfg.train().upcycle_reinit()) +
                        ": re-draws part of each expert when upcycling a dense checkpoint, and " + dir +
                        " is not one for this model (must be 0)");
  });
  if (!upcycle) {  // the same model (load_checkpoint checks it): its weights, a fresh optimizer
    const TrainState st = load_checkpoint(dir, cfg, model, par, /*optimizer=*/false, CheckpointUse::init_from);
    const std::string moved = routing_changes(m.config(), cfg);
    if (!moved.empty() && (!par || par->rank() == 0))
      std::cerr << "note: --init-from " << dir << ": " << moved
                << ": the same weights route otherwise here than in the source (set them as it had them to keep "
                   "its function)\n";
    return {{where, st.step, false}, st.data_position};
  }
  run_agreed(par, [&] {
    if (par && par->rank() != 0) return;
    check_upcycle(cfg, m, dir);
    verify_checkpoint(dir, m);
  });
  ckpt::Stager st(dir, m);
  const DropUpcycle drop(cfg);
  run_agreed(par, [&] {  // everything read, checked and re-drawn before the model changes
    for (Param* p : model.params().all()) {
      if (p->expert()) {  // this rank's experts, each the layer's dense FFN (in part, with drop)
        const std::string src = dense_source(p->name);
        const bool redraws = drop.active() && p->name.compare(p->name.size() - 2, 2, "b2") != 0;
        for (int64_t i = 0; i < p->local_rows(); ++i) {
          const int64_t g = p->row_begin + i;
          if (redraws)
            drop.apply(p->name, g, st.need_copy(src, p->row_shape(g), p->local_row(p->value, i)));
          else
            st.need(src, p->row_shape(g), p->local_row(p->value, i));
        }
      } else if (p->name.find(".moe.router.") == std::string::npos) {
        st.need(p->name, p->shape, p->value);  // (any other MoE weight: refused as missing)
      }  // else a router's weights: no counterpart, this model's init
    }
    ckpt::stage_centroids(st, model, m, dir);
  });
  st.commit(model);
  return {{where, m.step(), true}, m.data_position()};
}

}  // namespace sy
