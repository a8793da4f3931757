#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "core/file.h"
#include "runtime/checkpoint_stager.h"
#include "runtime/checkpoint_store.h"
#include "runtime/moe_layer.h"
#include "runtime/optimizer_shard.h"
#include "runtime/output_file.h"
#include "runtime/safetensors.h"

#ifndef SY_CODE_VERSION
#define SY_CODE_VERSION "unknown"
#endif

namespace sy {

namespace fs = std::filesystem;
namespace pb = google::protobuf;
using switchyard::CheckpointManifest;
using ckpt::expert_row;
using ckpt::Stager;

namespace {

constexpr int kFormatVersion = 1;
constexpr int64_t kMaxStep = 100000000;  // train.steps' largest value (runtime/config.cc)
constexpr const char* kManifest = "manifest.pbtxt";
constexpr const char* kDenseModel = "model-dense.safetensors";
constexpr const char* kDenseOptim = "optim-dense.safetensors";
constexpr const char* kRouting = "routing.safetensors";
constexpr const char* kMoment1 = ".exp_avg";
constexpr const char* kMoment2 = ".exp_avg_sq";

int rank_of(ParallelContext* par) { return par ? par->rank() : 0; }
int world_of(ParallelContext* par) { return par ? par->world_size() : 1; }
int ep_of(ParallelContext* par) { return par ? par->ep_size : 1; }

std::string shard_file(const char* kind, int shard, int ep) {
  char b[96];
  std::snprintf(b, sizeof b, "%s-experts-%05d-of-%05d.safetensors", kind, shard, ep);
  return b;
}

// A host tensor with t's bytes (t itself on the CPU).
Tensor host(const Tensor& t) { return t.device().is_cpu() ? t : t.to(host_ctx()); }

// Local row i of an expert parameter's tensor (value, m or v) as one expert's
// tensor: (C, H) for w1, or (C, H_g) when the experts' widths differ.
Tensor row(const Param& p, const Tensor& t, int64_t i) { return p.local_row(t, i); }

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "%08x", v);
  return b;
}

// What this rank writes.
NamedTensors dense_tensors(Transformer& model, bool moments) {
  NamedTensors out;
  for (Param* p : model.params().all()) {
    if (p->expert()) continue;
    if (!moments) {
      out.emplace_back(p->name, host(p->value));
    } else {
      out.emplace_back(p->name + kMoment1, host(p->m));
      out.emplace_back(p->name + kMoment2, host(p->v));
    }
  }
  return out;
}

NamedTensors expert_tensors(Transformer& model, bool moments) {
  NamedTensors out;
  for (Param* p : model.params().all()) {
    if (!p->expert()) continue;
    for (int64_t i = 0; i < p->local_rows(); ++i) {
      const std::string name = expert_row(*p, p->row_begin + i);
      if (!moments) {
        out.emplace_back(name, host(row(*p, p->value, i)));
      } else {
        out.emplace_back(name + kMoment1, host(row(*p, p->m, i)));
        out.emplace_back(name + kMoment2, host(row(*p, p->v, i)));
      }
    }
  }
  return out;
}

// The moments this rank writes (rank 0 the dense ones, rank s < ep expert
// shard s's): its own where they are whole; where sharded
// (parallel.shard_optimizer) gathered from the group first, so there every
// rank calls these (runtime/optimizer_shard.h).
NamedTensors dense_moments(Transformer& model, ParallelContext* par) {
  ParamStore& ps = model.params();
  if (ps.moment_parts(ParamKind::dense) == 1) return rank_of(par) == 0 ? dense_tensors(model, true) : NamedTensors{};
  NamedTensors out;
  for (Param* p : ps.all()) {
    if (p->expert()) continue;
    for (bool second : {false, true}) {
      const Tensor t = gather_moments(model.ctx(), ps, *par, ParamKind::dense, param_elements(*p), second);
      if (t.defined()) out.emplace_back(p->name + (second ? kMoment2 : kMoment1), t.reshape(p->shape));
    }
  }
  return out;
}

NamedTensors expert_moments(Transformer& model, ParallelContext* par) {
  ParamStore& ps = model.params();
  if (ps.moment_parts(ParamKind::expert) == 1)
    return rank_of(par) < ep_of(par) ? expert_tensors(model, true) : NamedTensors{};
  NamedTensors out;  // (on replica 0 of each shard: world rank s < ep, the shard's writer)
  for (Param* p : ps.all()) {
    if (!p->expert()) continue;
    for (int64_t i = 0; i < p->local_rows(); ++i)
      for (bool second : {false, true}) {
        const Tensor t = gather_moments(model.ctx(), ps, *par, ParamKind::expert, row_elements(*p, i), second);
        if (t.defined())
          out.emplace_back(expert_row(*p, p->row_begin + i) + (second ? kMoment2 : kMoment1),
                           t.reshape(p->row_shape(p->row_begin + i)));
      }
  }
  return out;
}

NamedTensors routing_tensors(Transformer& model) {
  NamedTensors out;
  for (const CentroidSetRef& c : model.centroid_sets()) {
    out.emplace_back(c.prefix + ".mu", host(c.centroids->mu));
    out.emplace_back(c.prefix + ".sum", host(c.centroids->sum));
    out.emplace_back(c.prefix + ".count", host(c.centroids->count));
  }
  for (const auto& [name, t] : model.balance_biases()) out.emplace_back(name, host(t));
  return out;
}

int64_t local_expert_rows(Transformer& model) {
  int64_t n = 0;
  for (Param* p : model.params().all())
    if (p->expert()) n += p->local_rows();
  return n;
}

// One file's entry, from its header (tensors in the order of their bytes)
// and the digest its writer computed.
void add_file(CheckpointManifest& m, const std::string& dir, const std::string& name, int writer,
              const FileDigest& d) {
  SafetensorsReader rd(join_path(dir, name));
  std::vector<const TensorRecord*> recs;
  for (const auto& t : rd.tensors()) recs.push_back(&t);
  std::sort(recs.begin(), recs.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  SY_CHECK(rd.file_bytes() == d.bytes && recs.size() == d.tensor_crc32.size(),
           join_path(dir, name) << ": " << rd.file_bytes() << " bytes and " << recs.size()
                                << " tensors on disk, the writer reported " << d.bytes << " and "
                                << d.tensor_crc32.size());
  auto* f = m.add_files();
  f->set_name(name);
  f->set_bytes(static_cast<int64_t>(d.bytes));
  f->set_crc32(d.crc32);
  f->set_writer_rank(writer);
  for (size_t i = 0; i < recs.size(); ++i) {
    auto* t = f->add_tensors();
    t->set_name(recs[i]->name);
    t->set_dtype(recs[i]->dtype);
    for (int64_t s : recs[i]->shape) t->add_shape(s);
    t->set_begin(static_cast<int64_t>(recs[i]->begin));
    t->set_end(static_cast<int64_t>(recs[i]->end));
    t->set_crc32(d.tensor_crc32[i]);
  }
}

// A field's value in text form, by dotted path ("model.d_model").
std::string field_text(const pb::Message& root, const std::string& path) {
  const pb::Message* msg = &root;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string name = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const pb::FieldDescriptor* f = msg->GetDescriptor()->FindFieldByName(name);
    SY_CHECK(f, "no field " << path);
    if (dot == std::string::npos) {
      std::string out;
      if (!f->is_repeated()) {
        pb::TextFormat::PrintFieldValueToString(*msg, f, -1, &out);
        return out;
      }
      const int n = msg->GetReflection()->FieldSize(*msg, f);  // "[a, b]"
      for (int i = 0; i < n; ++i) {
        std::string v;
        pb::TextFormat::PrintFieldValueToString(*msg, f, i, &v);
        out += (i ? ", " : "") + v;
      }
      return "[" + out + "]";
    }
    msg = &msg->GetReflection()->GetMessage(*msg, f);
    start = dot + 1;
  }
}

// The tensors a checkpoint must hold for this model, by name (every expert
// row, whichever rank holds it), with their shapes.
std::map<std::string, Shape> model_tensors(Transformer& model, bool optimizer) {
  std::map<std::string, Shape> out;
  auto add = [&](const std::string& name, const Shape& s) {
    out[name] = s;
    if (optimizer) out[name + kMoment1] = s, out[name + kMoment2] = s;
  };
  for (Param* p : model.params().all()) {
    if (!p->expert()) {
      add(p->name, p->shape);
      continue;
    }
    for (int64_t g = 0; g < p->rows_total; ++g) add(expert_row(*p, g), p->row_shape(g));
  }
  for (const CentroidSetRef& c : model.centroid_sets()) {
    out[c.prefix + ".mu"] = c.centroids->mu.shape();
    out[c.prefix + ".sum"] = c.centroids->sum.shape();
    out[c.prefix + ".count"] = c.centroids->count.shape();
  }
  for (const auto& [name, t] : model.balance_biases()) out[name] = t.shape();
  return out;
}

// Every tensor this model needs is listed, and the model files hold nothing
// that is not part of this model.
void check_tensor_set(Transformer& model, const CheckpointManifest& m, const std::string& dir, bool optimizer) {
  const bool has_optim = std::any_of(m.files().begin(), m.files().end(),
                                     [](const auto& f) { return f.name().rfind("optim-", 0) == 0; });
  if (optimizer && !has_optim)
    throw ConfigError(join_path(dir, kManifest) + ": a checkpoint of weights only (no optimizer state; import_hf "
                                                  "writes such): start a new run from it with --init-from");
  const std::map<std::string, Shape> need = model_tensors(model, optimizer), weights = model_tensors(model, false);
  std::set<std::string> listed;
  for (const auto& f : m.files())
    for (const auto& t : f.tensors()) {
      listed.insert(t.name());
      const bool model_file = f.name().rfind("model-", 0) == 0 || f.name() == kRouting;
      if (model_file && !weights.count(t.name()))
        throw ConfigError(join_path(dir, f.name()) + ": tensor " + printable(t.name(), 120) +
                          " is not part of this model");
    }
  for (const auto& [name, shape] : need)
    if (!listed.count(name))
      throw ConfigError(join_path(dir, kManifest) + ": tensor " + name + " is missing (this model needs it)");
}

}  // namespace

void run_agreed(ParallelContext* par, const std::function<void()>& fn) {
  if (par && par->world_size() > 1) return agree_on(*par->world, fn);
  try {
    fn();
  } catch (const ConfigError& e) {
    throw AgreedError(e.what(), 2);
  }
}

namespace {
// save_checkpoint's writing into its unpublished directory .<name>.tmp of
// root, and the publishing.
std::string save_into(const std::string& root, const std::string& tmp_name, const std::string& name,
                      const Config& cfg, Transformer& model, const TrainState& state, ParallelContext* par, int keep);
}  // namespace

std::string save_checkpoint(const std::string& root, const Config& cfg, Transformer& model, const TrainState& state,
                            ParallelContext* par, int keep) {
  const int rank = rank_of(par);
  const std::string name = step_dir_name(state.step), tmp_name = "." + name + ".tmp";
  const std::string tmp = join_path(root, tmp_name);
  if (rank == 0) {
    make_output_dir("train.checkpoint_dir", root);
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    fsync_path(root);
  }
  // A failure from here on (a full disk, an I/O error) takes the unpublished
  // directory with it, on whichever rank it happens (a failing rank ends the
  // job): nothing half-written is left for the disk to hold.
  try {
    return save_into(root, tmp_name, name, cfg, model, state, par, keep);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

namespace {

std::string save_into(const std::string& root, const std::string& tmp_name, const std::string& name,
                      const Config& cfg, Transformer& model, const TrainState& state, ParallelContext* par, int keep) {
  const int rank = rank_of(par), world = world_of(par), ep = ep_of(par);
  const std::string tmp = join_path(root, tmp_name);
  if (world > 1) par->world->barrier("checkpoint directory");

  // Expert shards: rank s < ep writes shard s. Their digests reach rank 0
  // through one all-reduce (each writer fills its own slots), which also
  // tells rank 0 that every file is complete.
  const int64_t rows = local_expert_rows(model);
  const int64_t slots = 4 + 3 * rows;  // model bytes, crc, row crcs; optim bytes, crc, 2 x row crcs
  Tensor digests = Tensor::zeros({std::max<int64_t>(1, ep * slots)}, DType::f64, host_ctx());
  auto put = [&](double* at, const FileDigest& d) {
    at[0] = static_cast<double>(d.bytes);
    at[1] = d.crc32;
    for (size_t i = 0; i < d.tensor_crc32.size(); ++i) at[2 + i] = d.tensor_crc32[i];
  };
  const std::map<std::string, std::string> optim_meta = {
      {"optimizer", "adamw"}, {"step", std::to_string(state.optimizer_step)}};
  // (The moments are made on every rank: where sharded, gathering them is
  // collective. Each file's host copies are freed once it is written.) A
  // model built for inference only has none: a checkpoint of its weights.
  const bool optimizer = !model.params().inference_only();
  if (rows > 0) {
    const NamedTensors optim = optimizer ? expert_moments(model, par) : NamedTensors{};
    if (rank < ep) {
      double* at = digests.data<double>() + rank * slots;
      put(at, write_safetensors(join_path(tmp, shard_file("model", rank, ep)), expert_tensors(model, false)));
      if (optimizer)
        put(at + 2 + rows, write_safetensors(join_path(tmp, shard_file("optim", rank, ep)), optim, optim_meta));
    }
  }
  FileDigest dense_model, dense_optim, routing;
  const NamedTensors routing_state = routing_tensors(model);
  if (rank == 0) dense_model = write_safetensors(join_path(tmp, kDenseModel), dense_tensors(model, false));
  if (optimizer) {
    const NamedTensors optim = dense_moments(model, par);
    if (rank == 0) dense_optim = write_safetensors(join_path(tmp, kDenseOptim), optim, optim_meta);
  }
  if (rank == 0) {
    if (!routing_state.empty()) routing = write_safetensors(join_path(tmp, kRouting), routing_state);
  }
  if (world > 1) par->world->all_reduce_sum(digests, host_ctx().stream, "checkpoint digests");

  std::string dir = join_path(root, name);
  if (rank == 0) {
    CheckpointManifest m;
    m.set_format_version(kFormatVersion);
    m.set_code_version(SY_CODE_VERSION);
    *m.mutable_config() = cfg;
    fill_defaults(*m.mutable_config());
    m.set_step(state.step);
    m.set_optimizer_step(state.optimizer_step);
    m.set_tokens_seen(state.tokens_seen);
    m.set_data_position(state.data_position);
    m.set_seed(cfg.train().seed());
    m.set_bad_steps(state.bad_steps);
    m.set_bad_steps_in_a_row(state.bad_steps_in_a_row);
    if (!state.data.empty()) m.set_data(state.data);
    m.set_train_seconds(state.train_seconds);
    m.set_world_size(world);
    m.set_expert_parallel(ep);
    add_file(m, tmp, kDenseModel, 0, dense_model);
    if (optimizer) add_file(m, tmp, kDenseOptim, 0, dense_optim);
    if (rows > 0)
      for (int s = 0; s < ep; ++s) {
        const double* at = digests.data<double>() + s * slots;
        auto digest = [&](const double* a, int64_t n) {
          FileDigest d{static_cast<uint64_t>(a[0]), static_cast<uint32_t>(a[1]), {}};
          for (int64_t i = 0; i < n; ++i) d.tensor_crc32.push_back(static_cast<uint32_t>(a[2 + i]));
          return d;
        };
        add_file(m, tmp, shard_file("model", s, ep), s, digest(at, rows));
        if (optimizer) add_file(m, tmp, shard_file("optim", s, ep), s, digest(at + 2 + rows, 2 * rows));
      }
    if (!routing_state.empty()) add_file(m, tmp, kRouting, 0, routing);
    for (const CentroidSetRef& c : model.centroid_sets()) {
      auto* e = m.add_centroids();
      e->set_prefix(c.prefix);
      e->set_initialized(c.centroids->initialized);
    }
    for (const auto& [bias, t] : model.balance_biases()) m.add_balance_biases(bias);
    if (!state.origin.checkpoint.empty()) {
      m.mutable_origin()->set_checkpoint(state.origin.checkpoint);
      m.mutable_origin()->set_step(state.origin.step);
      m.mutable_origin()->set_upcycled(state.origin.upcycled);
    }
    std::string text;
    pb::TextFormat::PrintToString(m, &text);
    write_file(join_path(tmp, kManifest), "# Switchyard checkpoint manifest (CheckpointManifest, configs/switchyard.proto)\n" + text,
               Sync::fsync);
    publish_checkpoint(root, tmp_name, name);
    prune_checkpoints(root, keep);
  }
  if (world > 1) par->world->barrier("checkpoint published");
  return dir;
}

}  // namespace

CheckpointManifest read_manifest(const std::string& dir) {
  const std::string path = join_path(dir, kManifest);
  const std::string kind = not_a_regular_file(path);  // (a link to a device would be read forever)
  if (kind == "no such file")
    throw ConfigError(path + ": missing (not a checkpoint, or one whose writing did not finish)");
  if (!kind.empty()) throw ConfigError(path + ": " + kind + ", not a checkpoint manifest");
  CheckpointManifest m;
  parse_text_proto(read_whole_file(path, "the checkpoint manifest"), path, m);
  if (m.format_version() != kFormatVersion)
    throw ConfigError(path + ": format_version = " + std::to_string(m.format_version()) + ": this build reads " +
                      std::to_string(kFormatVersion));
  // The training position: a damaged or hand-edited manifest must not resume
  // at a negative step, with more AdamW updates than steps (its bias
  // correction would run ahead), or at a batch number the data stream cannot
  // key: batches are numbered in 32 bits (runtime/data.cc's RandomKey), so a
  // larger position would silently repeat the stream.
  auto position = [&](const char* field, const std::string& value, const std::string& allowed) {
    throw ConfigError(path + ": " + field + " = " + value + ": must be in " + allowed);
  };
  if (m.step() < 0 || m.step() > kMaxStep)
    position("step", std::to_string(m.step()), "[0, " + std::to_string(kMaxStep) + "] (train.steps' range)");
  if (m.optimizer_step() < 0 || m.optimizer_step() > m.step())
    position("optimizer_step", std::to_string(m.optimizer_step()),
             "[0, step = " + std::to_string(m.step()) + "] (AdamW updates are at most the steps)");
  if (m.data_position() > UINT32_MAX)
    position("data_position", std::to_string(m.data_position()),
             "[0, " + std::to_string(UINT32_MAX) + "] (the data stream numbers its batches in 32 bits)");
  if (m.tokens_seen() < 0) position("tokens_seen", std::to_string(m.tokens_seen()), "[0, ...)");
  if (!(m.train_seconds() >= 0) || !std::isfinite(m.train_seconds()))
    position("train_seconds", std::to_string(m.train_seconds()), "[0, ...), finite");
  // Skipped steps are steps; a negative streak would put off
  // train.max_bad_steps' stop.
  if (m.bad_steps() < 0 || m.bad_steps() > m.step())
    position("bad_steps", std::to_string(m.bad_steps()), "[0, step = " + std::to_string(m.step()) + "]");
  if (m.bad_steps_in_a_row() < 0 || m.bad_steps_in_a_row() > m.bad_steps())
    position("bad_steps_in_a_row", std::to_string(m.bad_steps_in_a_row()),
             "[0, bad_steps = " + std::to_string(m.bad_steps()) + "]");
  // The layout the files were written in (their shards are read by it).
  if (m.has_world_size() && m.world_size() < 1) position("world_size", std::to_string(m.world_size()), "[1, ...)");
  if (m.has_world_size() && m.has_expert_parallel() &&
      (m.expert_parallel() < 1 || m.world_size() % m.expert_parallel() != 0))
    position("expert_parallel", std::to_string(m.expert_parallel()),
             "the divisors of world_size = " + std::to_string(m.world_size()));
  // Every file is read from the checkpoint's own directory: a name that
  // reaches elsewhere ("../x", "/x") or that the file system cannot hold is
  // refused here, before anything opens it.
  for (int i = 0; i < m.files_size(); ++i) {
    const std::string& n = m.files(i).name();
    if (!plain_file_name(n))
      throw ConfigError(path + ": files[" + std::to_string(i) + "].name = \"" + printable(n, 80) +
                        "\": must be a file name in the checkpoint directory (letters, digits, '.', '_', '-'; "
                        "not starting with '.'; at most 255)");
  }
  return m;
}

void verify_checkpoint(const std::string& dir, const CheckpointManifest& m) {
  for (const auto& f : m.files()) {
    const std::string path = join_path(dir, f.name());
    if (const std::string kind = not_a_regular_file(path); !kind.empty())
      throw ConfigError(path + ": " + (kind == "no such file" ? std::string("missing") : kind) +
                        " (the manifest lists it as a file)");
    const SafetensorsReader rd(path);
    // Names and dtypes come from the files and the manifest: printed escaped.
    auto fail = [&](const std::string& tensor, const std::string& what) {
      throw ConfigError(path + ": tensor " + printable(tensor, 120) + ": " + what);
    };
    for (const auto& t : f.tensors()) {
      const TensorRecord* r = rd.find(t.name());
      if (!r) fail(t.name(), "missing from the file (the manifest lists it)");
      if (r->dtype != t.dtype())
        fail(t.name(), "dtype " + printable(r->dtype, 40) + " in the file, " + printable(t.dtype(), 40) + " in the manifest");
      const Shape want(t.shape().begin(), t.shape().end());
      if (r->shape != want)
        fail(t.name(), "shape " + shape_str(r->shape) + " in the file, " + shape_str(want) + " in the manifest");
      if (r->begin != static_cast<uint64_t>(t.begin()) || r->end != static_cast<uint64_t>(t.end()))
        fail(t.name(), "bytes [" + std::to_string(r->begin) + ", " + std::to_string(r->end) + ") in the file, [" +
                           std::to_string(t.begin()) + ", " + std::to_string(t.end()) + ") in the manifest");
    }
    if (rd.tensors().size() != static_cast<size_t>(f.tensors_size()))
      for (const auto& r : rd.tensors()) {
        bool listed = false;
        for (const auto& t : f.tensors()) listed = listed || t.name() == r.name;
        if (!listed) fail(r.name, "in the file but not in the manifest");
      }
    if (rd.file_bytes() != static_cast<uint64_t>(f.bytes()))
      throw ConfigError(path + ": " + std::to_string(rd.file_bytes()) + " bytes, the manifest says " +
                        std::to_string(f.bytes()));
    for (const auto& t : f.tensors()) {
      const uint32_t crc = rd.crc32(*rd.find(t.name()));
      if (crc != t.crc32())
        fail(t.name(), "CRC-32 " + hex32(crc) + ", the manifest says " + hex32(t.crc32()) + ": its bytes are corrupt");
    }
    const FileDigest d = rd.digest();
    if (d.crc32 != f.crc32())
      throw ConfigError(path + ": CRC-32 " + hex32(d.crc32) + ", the manifest says " + hex32(f.crc32()) +
                        ": the header is corrupt");
  }
}

void check_compatible(const Config& cfg, const CheckpointManifest& m, const std::string& dir, CheckpointUse use) {
  const Config& old = m.config();
  const bool upcycle = use == CheckpointUse::upcycle;
  const bool moe = !upcycle && (cfg.moe().num_experts() > 0 || old.moe().num_experts() > 0);
  const bool sparse = cfg.attention().kind() != switchyard::AttentionConfig::DENSE ||
                      old.attention().kind() != switchyard::AttentionConfig::DENSE;
  std::vector<std::string> fields = {"model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads",
                                     "model.n_kv_heads",
                                     "model.ffn_hidden", "model.seq_len", "depth.every_n_layers",
                                     "attention.kind",
                                     // the model options: each changes the parameters or what a layer computes
                                     "model.position", "model.norm", "model.activation", "model.bias",
                                     "model.tie_embeddings"};
  if (cfg.model().position() == switchyard::ModelConfig::ROPE || old.model().position() == switchyard::ModelConfig::ROPE)
    fields.push_back("model.rope_base");  // no parameter, but the same weights would compute something else
  // A new run from these weights may take another window where no parameter
  // depends on it (rotary positions, dense attention: no position table, no
  // cluster count from the window): a longer or shorter context to
  // fine-tune at. A resumed run keeps its window.
  const bool rope = cfg.model().position() == switchyard::ModelConfig::ROPE &&
                    old.model().position() == switchyard::ModelConfig::ROPE;
  if (use != CheckpointUse::resume && rope && !sparse)
    fields.erase(std::find(fields.begin(), fields.end(), "model.seq_len"));
  if (!upcycle) fields.push_back("moe.num_experts");
  if (moe)
    fields.insert(fields.end(), {"moe.every_n_layers", "moe.first_dense_layers", "moe.expert_hidden", "moe.shared_expert",
                                 "moe.router"});
  // Hash routing's map of token ids to experts: drawn from the seed, or the
  // balanced table (compared below).
  auto hashes = [](const Config& c, switchyard::MoeConfig::HashAssignment a) {
    return c.moe().router() == switchyard::MoeConfig::HASH && c.moe().hash_assignment() == a;
  };
  if (moe && (cfg.moe().router() == switchyard::MoeConfig::HASH || old.moe().router() == switchyard::MoeConfig::HASH))
    fields.push_back("moe.hash_assignment");
  if (moe && (hashes(cfg, switchyard::MoeConfig::SPLITMIX) || hashes(old, switchyard::MoeConfig::SPLITMIX)))
    fields.push_back("train.seed");
  if (sparse)
    fields.insert(fields.end(), {"attention.last_n_layers", "attention.num_routing_heads", "attention.num_clusters",
                                 "attention.share_centroids"});
  // A field as compared: as written, but the experts' widths and the
  // key/value heads as resolved (empty, one value and one per expert may
  // spell the same widths; n_kv_heads 0 spells n_heads).
  auto text = [](const Config& c, const std::string& f) -> std::string {
    if (f == "model.n_kv_heads") return std::to_string(kv_heads(c.model()));
    if (f != "moe.expert_hidden") return field_text(c, f);
    std::string out;
    if (c.moe().num_experts() > 0)
      for (int64_t h : expert_hidden_sizes(c.moe(), c.model().ffn_hidden()))
        out += (out.empty() ? "" : ", ") + std::to_string(h);
    return "[" + out + "]";
  };
  // Why a new run could not take another window here (the one field such a
  // run may change where nothing depends on it).
  const std::string window_why =
      !rope ? " (learned positions: the position table has one row a position; rotary positions would not)"
            : " (sparse attention: its clusters or blocks follow the window)";
  for (const std::string& f : fields) {
    const std::string mine = text(cfg, f), theirs = text(old, f);
    if (mine != theirs)
      throw ConfigError(join_path(dir, kManifest) + ": " + f + " = " + mine + " in this run, " + theirs +
                        (f == "model.seq_len" && use != CheckpointUse::resume ? " in the checkpoint" + window_why
                         : upcycle ? " in the checkpoint: a dense checkpoint upcycles only into a model that is the "
                                     "same outside its MoE layers"
                         : use == CheckpointUse::init_from
                             ? " in the checkpoint: --init-from takes the same model's weights, or a dense "
                               "checkpoint's (moe.num_experts = 0) into a model that adds MoE layers"
                             : " in the checkpoint: a checkpoint loads only into the same model (the "
                               "expert-parallel size may change)"));
  }
  // The balanced map where both configs give one (a run resumed with a
  // config file takes the checkpoint's first: adopt_hash_table).
  const auto &a = cfg.moe().hash_table(), &b = old.moe().hash_table();
  if (moe && !a.empty() && !b.empty())
    for (int i = 0; i < std::max(a.size(), b.size()); ++i)
      if (i >= a.size() || i >= b.size() || a[i] != b[i])
        throw ConfigError(join_path(dir, kManifest) + ": moe.hash_table[" + std::to_string(i) + "] = " +
                          (i < a.size() ? std::to_string(a[i]) : "none") + " in this run, " +
                          (i < b.size() ? std::to_string(b[i]) : "none") +
                          " in the checkpoint: the balanced map of token ids to experts must stay");
}

void adopt_hash_table(Config& cfg, const CheckpointManifest& m) {
  const auto& old = m.config().moe();
  if (cfg.moe().hash_table_size() == 0 && old.hash_table_size() > 0 && cfg.moe().router() == old.router() &&
      cfg.moe().hash_assignment() == old.hash_assignment())
    *cfg.mutable_moe()->mutable_hash_table() = old.hash_table();
}

TrainState load_checkpoint(const std::string& dir, const Config& cfg, Transformer& model, ParallelContext* par,
                           bool optimizer, CheckpointUse use) {
  CheckpointManifest m;
  run_agreed(par, [&] {
    m = read_manifest(dir);
    if (rank_of(par) != 0) return;
    check_compatible(cfg, m, dir, use);
    verify_checkpoint(dir, m);
    check_tensor_set(model, m, dir, optimizer);
  });
  Stager st(dir, m);
  ParamStore& ps = model.params();
  run_agreed(par, [&] {
    for (Param* p : ps.all()) {
      // A tensor's value, and its moments: whole, or where they are sharded
      // (parallel.shard_optimizer) the piece of arena elements `at` this rank
      // keeps (runtime/optimizer_shard.h).
      auto need = [&](const std::string& name, const Shape& shape, const Tensor& value, const Tensor& m1,
                      const Tensor& m2, ElementRange at) {
        st.need(name, shape, value);
        if (!optimizer) return;
        if (ps.moment_parts(p->kind) == 1) {
          st.need(name + kMoment1, shape, m1);
          st.need(name + kMoment2, shape, m2);
          return;
        }
        const MomentPiece piece = moment_piece(ps, p->kind, at);
        if (piece.n == 0) return;
        const ParamArena& a = ps.arena(p->kind);
        st.need_part(name + kMoment1, shape, a.m.rows(piece.dst, piece.dst + piece.n), piece.src);
        st.need_part(name + kMoment2, shape, a.v.rows(piece.dst, piece.dst + piece.n), piece.src);
      };
      if (!p->expert()) {
        need(p->name, p->shape, p->value, p->m, p->v, param_elements(*p));
        continue;
      }
      const bool whole = optimizer && ps.moment_parts(p->kind) == 1;  // (row views of m and v exist)
      for (int64_t i = 0; i < p->local_rows(); ++i)
        need(expert_row(*p, p->row_begin + i), p->row_shape(p->row_begin + i), row(*p, p->value, i),
             whole ? row(*p, p->m, i) : Tensor(), whole ? row(*p, p->v, i) : Tensor(), row_elements(*p, i));
    }
    ckpt::stage_centroids(st, model, m, dir);
    for (const auto& [name, t] : model.balance_biases()) st.need(name, t.shape(), t);
  });
  // Everything is read and checked: now the model changes.
  st.commit(model);
  TrainState s;
  s.step = m.step();
  s.optimizer_step = m.optimizer_step();
  s.tokens_seen = m.tokens_seen();
  s.bad_steps = m.bad_steps();
  s.bad_steps_in_a_row = m.bad_steps_in_a_row();
  s.data = m.data();
  s.train_seconds = m.train_seconds();
  s.data_position = m.data_position();
  if (m.has_origin()) s.origin = {m.origin().checkpoint(), m.origin().step(), m.origin().upcycled()};
  return s;
}

}  // namespace sy
