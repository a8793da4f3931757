// route_report: what a checkpoint's routers decide by, on the CPU, over the
// validation split's fixed evaluation batches (runtime/route_analysis.h
// defines each figure):
//
//   build/bin/route_report --checkpoint latest [--compare checkpoints/step_00000400] \
//                          [--batches 16] [--top 5] [--json report.json]
//
// Per MoE layer: the share of tokens served (some choice kept), how much of
// the first choice the token id, the position in the window and the
// previous MoE layer's first choice explain (uncertainty coefficients, 0
// none, 1 all), with --compare the share of first choices unlike another
// checkpoint's of the same run and how much the other's first choice
// explains this one's (whatever the experts' numbering: other seeds too);
// then per expert its share of first choices
// and the ids it gets most. Per depth-routed block: the share of tokens it
// processes, how much the id and the position explain that, the decisions
// changed, and the ids it processes most and least often. Routing as in
// evaluation (no router noise, capacity_factor_eval, the depth predictor
// where the config uses it). MoE layers in depth-routed blocks and
// expert-choice routers are named and skipped. Exit codes: 0 done, 2 bad input (a
// missing or corrupt checkpoint, checkpoints of different models, data the
// config names that is not there), 1 any other error.
#include <cblas.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "examples/checkpoint_tool.h"
#include "runtime/checkpoint.h"
#include "runtime/checkpoint_store.h"
#include "runtime/output_file.h"
#include "runtime/route_analysis.h"
#include "runtime/run_tool.h"
#include "runtime/training_data.h"

namespace {

// The MoE layers the report covers: tokens choose, not in a depth-routed block.
std::vector<int> analysed_layers(const sy::Config& cfg, std::ostream& notes) {
  std::vector<int> out;
  for (int l = 0; l < cfg.model().n_layers(); ++l) {
    if (!sy::is_moe_layer(cfg.moe(), l)) continue;
    if (cfg.moe().router() == switchyard::MoeConfig::EXPERT_CHOICE)
      notes << "h" << l << ": an expert-choice router (tokens have no first choice): skipped\n";
    else if (sy::is_depth_routed(cfg.depth(), l))
      notes << "h" << l << ": in a depth-routed block (its router sees the tokens the block keeps): skipped\n";
    else
      out.push_back(l);
  }
  return out;
}

std::vector<int> depth_blocks(const sy::Config& cfg) {
  std::vector<int> out;
  for (int l = 0; l < cfg.model().n_layers(); ++l)
    if (sy::is_depth_routed(cfg.depth(), l)) out.push_back(l);
  return out;
}

std::string id_text(int32_t id, bool bytes) {
  if (!bytes) return std::to_string(id);
  if (id == '\n') return "\\n";
  if (id == ' ') return "' '";
  if (id >= 33 && id < 127) return std::string(1, static_cast<char>(id));
  char b[8];
  std::snprintf(b, sizeof b, "x%02x", id);
  return b;
}

// Prints " <id> <share>" for each, then ends the line; the same pairs as JSON.
nlohmann::json print_ids(const std::vector<std::pair<int32_t, double>>& ids, bool bytes) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [id, share] : ids) {
    std::printf(" %s %.2f", id_text(id, bytes).c_str(), share);
    out.push_back({id, share});
  }
  std::printf("\n");
  return out;
}

std::string cell(double v) {  // -1: not measured
  char s[16];
  if (v < 0)
    std::snprintf(s, sizeof s, "-");
  else
    std::snprintf(s, sizeof s, "%.3f", v);
  return s;
}

// What one model decided over the batches: per analysed MoE layer each
// token's first choice and whether it was served, per depth-routed block
// whether it processed the token.
struct Decisions {
  std::vector<std::vector<int32_t>> first;
  std::vector<std::vector<uint8_t>> first_kept, served, processed;
};

void record(sy::Transformer& model, const sy::Batch& batch, const std::vector<int>& layers,
            const std::vector<int>& depth, Decisions& d) {
  model.forward(batch);
  d.first.resize(layers.size()), d.first_kept.resize(layers.size()), d.served.resize(layers.size());
  d.processed.resize(depth.size());
  size_t j = 0;
  for (const auto& [l, layer] : model.moe_layers()) {
    if (j == layers.size() || l != layers[j]) continue;
    const sy::ops::Route r = layer->route().on_host();
    const int32_t* group = r.group.data<int32_t>();
    const int32_t* slot = r.slot.data<int32_t>();
    for (int64_t i = 0; i < r.num_items; ++i) {
      d.first[j].push_back(group[i * r.k]);
      d.first_kept[j].push_back(slot[i * r.k] >= 0);
      bool kept = false;
      for (int64_t q = 0; q < r.k; ++q) kept = kept || slot[i * r.k + q] >= 0;
      d.served[j].push_back(kept);
    }
    ++j;
  }
  for (size_t b = 0; b < depth.size(); ++b) {
    const sy::ops::Route r = model.blocks()[depth[b]].depth()->route().on_host();
    const int32_t* group = r.group.data<int32_t>();
    for (int64_t i = 0; i < r.num_items; ++i) d.processed[b].push_back(group[i] >= 0);
  }
}

// The MoE layer before block l's, or -1.
int previous_moe_layer(const switchyard::MoeConfig& moe, int l) {
  for (int p = l - 1; p >= 0; --p)
    if (sy::is_moe_layer(moe, p)) return p;
  return -1;
}

nlohmann::json report_moe(const sy::RoutingSample& sample, const std::vector<int>& layers,
                          const switchyard::MoeConfig& moe, const Decisions& a, const Decisions* b, int top,
                          bool bytes) {
  const int64_t E = moe.num_experts();
  nlohmann::json out = nlohmann::json::array();
  if (layers.empty()) return out;
  std::printf("%-6s %7s %7s %9s %12s %12s %9s %12s\n", "layer", "experts", "served", "by id", "by position",
              "by previous", "changed", "by compared");
  std::vector<sy::LayerRouting> reports;
  const std::vector<int32_t> none;
  for (size_t j = 0; j < layers.size(); ++j) {
    // The previous MoE layer: the one just before, when it is analysed too.
    const bool previous = j > 0 && layers[j - 1] == previous_moe_layer(moe, layers[j]);
    reports.push_back(sy::analyse_layer(sample, E, a.first[j], a.first_kept[j], a.served[j],
                                        previous ? a.first[j - 1] : none, E, b ? b->first[j] : none, top));
    const sy::LayerRouting& r = reports.back();
    std::printf("h%-5d %7lld %7.3f %9.3f %12.3f %12s %9s %12s\n", layers[j], static_cast<long long>(E), r.served,
                r.by_id, r.by_position, cell(r.by_previous).c_str(), cell(r.changed).c_str(),
                cell(r.by_compared).c_str());
  }
  for (size_t j = 0; j < layers.size(); ++j) {
    const sy::LayerRouting& r = reports[j];
    std::printf("h%d experts (share of first choices, kept; the %s each gets most, with their share of it):\n",
                layers[j], bytes ? "bytes" : "ids");
    nlohmann::json experts = nlohmann::json::array();
    for (int64_t e = 0; e < E; ++e) {
      const sy::ExpertProfile& p = r.experts[e];
      std::printf("  e%-3lld %.3f %.3f |", static_cast<long long>(e), p.share, p.kept);
      experts.push_back({{"share", p.share}, {"kept", p.kept}, {"top_ids", print_ids(p.top_ids, bytes)}});
    }
    nlohmann::json layer = {{"layer", layers[j]}, {"served", r.served}, {"by_id", r.by_id},
                            {"by_position", r.by_position}, {"experts", experts}};
    if (r.by_previous >= 0) layer["by_previous"] = r.by_previous;
    if (r.changed >= 0) layer["changed"] = r.changed, layer["by_compared"] = r.by_compared;
    out.push_back(layer);
  }
  return out;
}

nlohmann::json report_depth(const sy::RoutingSample& sample, const std::vector<int>& depth, const Decisions& a,
                            const Decisions* b, int top, bool bytes) {
  nlohmann::json out = nlohmann::json::array();
  if (depth.empty()) return out;
  std::printf("%-6s %9s %9s %12s %9s   (depth-routed blocks)\n", "block", "processed", "by id", "by position",
              "changed");
  const std::vector<uint8_t> none;
  for (size_t j = 0; j < depth.size(); ++j) {
    const sy::DepthRouting d = sy::analyse_depth(sample, a.processed[j], b ? b->processed[j] : none, top);
    std::printf("h%-5d %9.3f %9.3f %12.3f %9s\n", depth[j], d.processed, d.by_id, d.by_position,
                cell(d.changed).c_str());
    nlohmann::json block = {{"layer", depth[j]}, {"processed", d.processed}, {"by_id", d.by_id},
                            {"by_position", d.by_position}};
    if (d.changed >= 0) block["changed"] = d.changed;
    std::printf("  h%d processed most (share processed):", depth[j]);
    block["most_processed"] = print_ids(d.most_processed, bytes);
    std::printf("  h%d passed most (share processed):", depth[j]);
    block["most_passed"] = print_ids(d.most_passed, bytes);
    out.push_back(block);
  }
  return out;
}

int run(int argc, char** argv) {
  CLI::App app{"Report what a Switchyard checkpoint's routers decide by"};
  app.option_defaults()->always_capture_default();  // --help shows each default
  std::string spec, root = "checkpoints", compare, json_path;
  int batches = 16, top = 5, threads = 1;
  bool overwrite = false;
  sy::add_checkpoint_options(app, spec, root);
  app.add_option("--compare", compare,
                 "another checkpoint of the model: the decisions that differ (one run's experts by index) and how "
                 "alike the two partitions of the tokens are (any run)");
  app.add_option("--batches", batches, "evaluation batches of the validation split")->check(CLI::Range(1, 100000));
  app.add_option("--top", top, "ids listed per expert or block")->check(CLI::Range(0, 1000));
  app.add_option("--json", json_path, "write the report as JSON here");
  app.add_flag("--overwrite", overwrite, "replace an existing non-empty --json file");
  app.add_option("--threads", threads, "OpenBLAS threads")->check(CLI::Range(1, 1024));
  if (const int rc = sy::parse_options(app, argc, argv); rc >= 0) return rc;
  openblas_set_num_threads(threads);
  if (!json_path.empty()) sy::check_output_path("--json", json_path, {}, overwrite);
  const std::string dir_a = sy::resolve_checkpoint(spec, root),
                    dir_b = compare.empty() ? "" : sy::resolve_checkpoint(compare, root);
  if (!json_path.empty()) {  // (not into a checkpoint: its manifest or weights replaced by the report)
    std::error_code ec;
    const std::filesystem::path parent = std::filesystem::path(json_path).parent_path();
    for (const std::string& dir : {dir_a, dir_b})
      if (!dir.empty() && std::filesystem::equivalent(parent.empty() ? "." : parent, dir, ec))
        throw sy::ConfigError("--json " + json_path + ": inside the checkpoint " + dir + "; write the report elsewhere");
  }
  sy::EvalModel a = sy::load_eval_model(dir_a);
  std::unique_ptr<sy::EvalModel> b;
  if (!compare.empty()) {
    b = std::make_unique<sy::EvalModel>(sy::load_eval_model(dir_b));
    // The same routers to compare: each layer's first choices (or a block's
    // decisions) in both; then the same model (check_compatible compares the
    // router too, but says less about why --compare needs it).
    std::ostringstream ignored;
    const auto& ma = a.cfg.moe();
    const auto& mb = b->cfg.moe();
    const auto routed = [&](const sy::Config& c) {  // "moe.router X, MoE layers [..], depth-routed blocks [..]"
      std::string out = "moe.router " + switchyard::MoeConfig::Router_Name(c.moe().router()) + ", MoE layers [";
      const std::vector<int> l = analysed_layers(c, ignored), d = depth_blocks(c);
      for (size_t i = 0; i < l.size(); ++i) out += (i ? "," : "") + std::to_string(l[i]);
      out += "], depth-routed blocks [";
      for (size_t i = 0; i < d.size(); ++i) out += (i ? "," : "") + std::to_string(d[i]);
      return out + "]";
    };
    if (ma.router() != mb.router() || analysed_layers(a.cfg, ignored) != analysed_layers(b->cfg, ignored) ||
        depth_blocks(a.cfg) != depth_blocks(b->cfg))
      throw sy::ConfigError(b->dir + ": " + routed(b->cfg) + " where " + a.dir + " has " + routed(a.cfg) +
                            ": --compare needs the same routed layers in both");
    sy::check_compatible(a.cfg, sy::read_manifest(b->dir), b->dir);
  }
  const sy::Config& cfg = a.cfg;
  std::ostringstream notes;
  const std::vector<int> layers = analysed_layers(cfg, notes), depth = depth_blocks(cfg);
  std::cout << notes.str();
  if (layers.empty() && depth.empty()) {
    std::cout << a.dir << ": no tokens-choose MoE layer or depth-routed block to report on\n";
    return 0;
  }
  const int64_t T = cfg.model().seq_len(), V = cfg.model().vocab_size(), B = cfg.train().batch();
  // The report reads the run's own validation split, as the checkpoint's
  // config names it: a file moved since training is said as such.
  const sy::TrainingData data = [&] {
    try {
      return sy::TrainingData(cfg);
    } catch (const sy::ConfigError& e) {
      throw sy::ConfigError(a.dir + "/manifest.pbtxt: the run's data (the report reads its validation split): " +
                            e.what());
    }
  }();
  sy::WindowSampler val(data.val(), B, T, 0);
  sy::RoutingSample sample{{}, {}, V, T};
  Decisions da, db;
  for (int i = 0; i < batches; ++i) {
    const sy::Batch batch = val.fixed(i);
    for (size_t n = 0; n < batch.inputs.size(); ++n) {
      sample.ids.push_back(batch.inputs[n]);
      sample.position.push_back(static_cast<int32_t>(n % T));
    }
    record(*a.model, batch, layers, depth, da);
    if (b) record(*b->model, batch, layers, depth, db);
  }

  const bool bytes =
      V == 256 && cfg.data().tokenizer().empty() && cfg.data().source() != switchyard::DataConfig::TOKEN_FILES;
  nlohmann::json report = {{"checkpoint", a.dir}, {"batches", batches}, {"tokens", sample.ids.size()}};
  if (b) report["compare"] = b->dir;
  std::printf("route_report: %s, %d validation batches (%zu tokens)%s%s\n", a.dir.c_str(), batches, sample.ids.size(),
              b ? ", compared with " : "", b ? b->dir.c_str() : "");
  report["layers"] = report_moe(sample, layers, cfg.moe(), da, b ? &db : nullptr, top, bytes);
  report["depth"] = report_depth(sample, depth, da, b ? &db : nullptr, top, bytes);
  if (!json_path.empty()) sy::write_file(json_path, report.dump(1) + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return sy::run_tool([&] { return run(argc, argv); });
}
