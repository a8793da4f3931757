// What checkpoint loads share (runtime/checkpoint.cc's resume,
// runtime/init_from.cc's new run from a checkpoint): expert rows' names, and
// the Stager that reads and checks every tensor one rank needs before
// anything in the model changes (all or nothing).
#pragma once
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "switchyard.pb.h"
#include "core/error.h"
#include "core/tensor.h"
#include "runtime/checkpoint_store.h"
#include "runtime/model.h"
#include "runtime/params.h"
#include "runtime/safetensors.h"

namespace sy::ckpt {

using switchyard::CheckpointManifest;

// Expert g's row of an expert parameter: "h1.moe.experts.w1.e5".
inline std::string expert_row(const Param& p, int64_t g) { return p.name + ".e" + std::to_string(g); }

// Reads the tensors one rank needs into host tensors, checked, before
// anything in the model changes.
class Stager {
 public:
  Stager(std::string dir, const CheckpointManifest& m) : dir_(std::move(dir)) {
    for (const auto& f : m.files())
      for (const auto& t : f.tensors()) where_[t.name()] = f.name();
  }
  void need(const std::string& name, const Shape& shape, Tensor dst) {
    staged_.emplace_back(dst, source(name, shape, dst));
  }
  // Elements [first, first + dst.numel()) of the tensor (flat) into dst
  // (1-D): only those read from the file (a sharded optimizer's piece of a
  // moment, runtime/optimizer_shard.h; a part's boundary can cut a large
  // tensor, an embedding of 50k x 4096 values has 800 MB a moment, of
  // which a rank may keep a sliver).
  void need_part(const std::string& name, const Shape& shape, Tensor dst, int64_t first) {
    const auto& [rd, rec] = record(name, shape, dst);
    SY_CHECK(dst.ndim() == 1, "a part of " << name << " into a tensor of " << shape_str(dst.shape()));
    staged_.emplace_back(dst, rd->read_range(*rec, first, dst.numel()));
  }
  // The same, with dst's own host copy of the tensor, returned for the
  // caller to change before anything is written (valid until the next call).
  Tensor& need_copy(const std::string& name, const Shape& shape, Tensor dst) {
    staged_.emplace_back(dst, source(name, shape, dst).clone());
    return staged_.back().second;
  }
  // A flag to set once the tensors are written (a centroid set's `initialized`).
  void flag(bool* at, bool value) { flags_.emplace_back(at, value); }
  // Everything read and checked: now the model changes. The bf16 shadows
  // are written again from the fp32 values (checkpoints hold the masters).
  void commit(Transformer& model) {
    for (auto& [dst, src] : staged_) dst.copy_from(src, model.ctx());
    model.params().refresh_shadows(model.ctx());
    for (auto& [at, value] : flags_) *at = value;
  }

 private:
  // The file's tensor `name`, checked against dst's dtype and `shape`; read
  // once however many tensors it fills.
  const Tensor& source(const std::string& name, const Shape& shape, const Tensor& dst) {
    const auto& [rd, rec] = record(name, shape, dst);
    Tensor& src = read_[name];
    if (!src.defined()) src = rd->read(*rec);
    return src;
  }
  // Where the file's tensor `name` is, its header checked against dst's
  // dtype and `shape`.
  std::pair<const SafetensorsReader*, const TensorRecord*> record(const std::string& name, const Shape& shape,
                                                                   const Tensor& dst) {
    auto it = where_.find(name);
    if (it == where_.end())
      throw ConfigError(join_path(dir_, "manifest.pbtxt") + ": tensor " + name + " is missing (this model needs it)");
    const SafetensorsReader& rd = reader(it->second);
    const TensorRecord* rec = rd.find(name);
    if (!rec) throw ConfigError(rd.path() + ": tensor " + name + " is missing (the manifest lists it here)");
    if (rec->dtype != safetensors_dtype(dst.dtype()))
      throw ConfigError(rd.path() + ": tensor " + name + ": dtype " + printable(rec->dtype, 40) + ", expected " +
                        safetensors_dtype(dst.dtype()));
    if (rec->shape != shape)
      throw ConfigError(rd.path() + ": tensor " + name + ": shape " + shape_str(rec->shape) + ", this model has " +
                        shape_str(shape));
    return {&rd, rec};
  }
  const SafetensorsReader& reader(const std::string& file) {
    auto& r = readers_[file];
    if (!r) r = std::make_unique<SafetensorsReader>(join_path(dir_, file));
    return *r;
  }
  std::string dir_;
  std::map<std::string, std::string> where_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> readers_;
  std::map<std::string, Tensor> read_;             // by name
  std::vector<std::pair<Tensor, Tensor>> staged_;  // (the model's tensor, what goes into it)
  std::vector<std::pair<bool*, bool>> flags_;
};

// Every centroid set of the model from routing.safetensors, and its
// `initialized` flag from the manifest (set by commit).
inline void stage_centroids(Stager& st, Transformer& model, const CheckpointManifest& m, const std::string& dir) {
  for (const CentroidSetRef& c : model.centroid_sets()) {
    st.need(c.prefix + ".mu", c.centroids->mu.shape(), c.centroids->mu);
    st.need(c.prefix + ".sum", c.centroids->sum.shape(), c.centroids->sum);
    st.need(c.prefix + ".count", c.centroids->count.shape(), c.centroids->count);
    const auto e = std::find_if(m.centroids().begin(), m.centroids().end(),
                                [&](const auto& s) { return s.prefix() == c.prefix; });
    if (e == m.centroids().end())
      throw ConfigError(join_path(dir, "manifest.pbtxt") + ": centroid set " + c.prefix + " is missing");
    st.flag(&c.centroids->initialized, e->initialized());
  }
}

}  // namespace sy::ckpt
