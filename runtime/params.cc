#include "runtime/params.h"

#include "ops/elementwise.h"

namespace sy {

Param* ParamStore::add(const std::string& name, Shape shape, Rng& rng, float std, bool decay, float fill,
                       ParamKind kind) {
  SY_CHECK(!finalized_, "parameter " << name << " added after the store was finalized");
  SY_CHECK(!find(name), "duplicate parameter name " << name);
  auto p = std::make_unique<Param>();
  p->name = name;
  p->shape = shape;
  p->decay = decay;
  p->kind = kind;
  p->rows_total = shape.empty() ? 1 : shape[0];
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> w(n, fill);
  if (std != 0.f) draw_normals(rng, std, n, 0, n, w.data());
  params_.push_back(std::move(p));
  staged_.push_back(std::move(w));
  return params_.back().get();
}

Param* ParamStore::add_rows(const std::string& name, Shape full, int64_t begin, int64_t end, Rng& rng, float std,
                            bool decay, ParamKind kind) {
  int64_t row = 1;
  for (size_t i = 1; i < full.size(); ++i) row *= full[i];
  Shape shard = full;
  shard[0] = end - begin;
  Param* p = add(name, shard, rng, 0.f, decay, 0.f, kind);
  p->row_begin = begin;
  p->rows_total = full[0];
  keep_slice(name, full[0] * row, begin * row, end * row, rng, std);
  return p;
}

Param* ParamStore::add_packed_rows(const std::string& name, const std::vector<Shape>& rows, int64_t begin,
                                   int64_t end, Rng& rng, float std, bool decay, ParamKind kind) {
  const int64_t G = static_cast<int64_t>(rows.size());
  SY_CHECK(0 <= begin && begin <= end && end <= G, "parameter " << name << ": rows [" << begin << ", " << end
                                                                  << ") of " << G);
  std::vector<int64_t> start(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    int64_t n = 1;
    for (int64_t d : rows[g]) n *= d;
    start[g + 1] = start[g] + n;
  }
  Param* p = add(name, {start[end] - start[begin]}, rng, 0.f, decay, 0.f, kind);
  p->row_begin = begin;
  p->rows_total = G;
  p->row_shapes = rows;
  p->row_start = start;
  keep_slice(name, start[G], start[begin], start[end], rng, std);
  return p;
}

// The last added parameter's staged values: elements [begin, end) of a whole
// tensor of `whole` elements drawn from rng (every element drawn, in order).
void ParamStore::keep_slice(const std::string& name, int64_t whole, int64_t begin, int64_t end, Rng& rng,
                            float std) {
  std::vector<float>& w = staged_.back();
  SY_CHECK(static_cast<int64_t>(w.size()) == end - begin,
           "parameter " << name << ": " << w.size() << " elements for a slice of " << end - begin);
  if (std != 0.f) draw_normals(rng, std, whole, begin, end, w.data());  // (else zeros, as added)
}

Shape Param::row_shape(int64_t g) const {
  if (!row_shapes.empty()) return row_shapes[g];
  return Shape(shape.begin() + (shape.empty() ? 0 : 1), shape.end());
}

int64_t Param::row_offset(int64_t g) const {
  if (!row_start.empty()) return row_start[g];
  int64_t n = 1;
  for (int64_t d : row_shape(0)) n *= d;
  return g * n;
}

int64_t Param::local_rows() const {
  if (!row_shapes.empty()) {
    int64_t r = 0;
    while (row_begin + r < rows_total && row_offset(row_begin + r) - global_begin() < shape[0]) ++r;
    return r;
  }
  return shape.empty() ? 1 : shape[0];
}

Tensor Param::local_row(const Tensor& t, int64_t i) const {
  const int64_t g = row_begin + i, b = row_offset(g) - global_begin(), e = row_offset(g + 1) - global_begin();
  return t.reshape({t.numel()}).rows(b, e).reshape(row_shape(g));
}

void ParamStore::finalize(Ctx& ctx) {
  SY_CHECK(!finalized_, "ParamStore::finalize called twice");
  int64_t size[2] = {0, 0};
  for (auto& p : params_) {
    const int k = static_cast<int>(p->kind);
    p->offset = size[k];
    size[k] += static_cast<int64_t>(staged_[&p - params_.data()].size());
  }
  for (int k = 0; k < 2; ++k) {
    ParamArena& a = arenas_[k];
    a.value = Tensor::empty({size[k]}, DType::f32, ctx);
    if (!inference_only_) {
      a.grad = Tensor::zeros({size[k]}, DType::f32, ctx);
      const int64_t moments = moment_part(static_cast<ParamKind>(k), moment_parts_[k], moment_index_[k]).size();
      a.m = Tensor::zeros({moments}, DType::f32, ctx);
      a.v = Tensor::zeros({moments}, DType::f32, ctx);
    }
    if (bf16_shadows_) a.value_bf16 = Tensor::empty({size[k]}, DType::bf16, ctx);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = *params_[i];
    ParamArena& a = arenas_[static_cast<int>(p.kind)];
    const int64_t n = static_cast<int64_t>(staged_[i].size());
    auto view = [&](const Tensor& arena) { return arena.rows(p.offset, p.offset + n).reshape(p.shape); };
    p.value = view(a.value);
    if (!inference_only_) p.grad = view(a.grad);
    if (!inference_only_ && moment_parts_[static_cast<int>(p.kind)] == 1) p.m = view(a.m), p.v = view(a.v);
    if (bf16_shadows_) p.value_bf16 = view(a.value_bf16);
    p.value.copy_from(Tensor::from_host(staged_[i], p.shape), ctx);
  }
  staged_.clear();
  finalized_ = true;
  refresh_shadows(ctx);
}

void ParamStore::set_inference_only(bool on) {
  SY_CHECK(!finalized_, "ParamStore::set_inference_only after finalize");
  inference_only_ = on;
}

void ParamStore::set_moment_shard(ParamKind k, int parts, int index) {
  SY_CHECK(!finalized_, "ParamStore::set_moment_shard after finalize");
  SY_CHECK(parts >= 1 && index >= 0 && index < parts, "moment shard " << index << " of " << parts);
  moment_parts_[static_cast<int>(k)] = parts;
  moment_index_[static_cast<int>(k)] = index;
}

ElementRange ParamStore::moment_part(ParamKind k, int parts, int index) const {
  // Boundaries at multiples of 16 elements (64 bytes): a part's values,
  // gradients and moments (which start at its first element) then share
  // their alignment, as the CUDA update's 16-byte path asks.
  const int64_t n = numel(k);
  auto boundary = [&](int i) { return i == parts ? n : n * i / parts / 16 * 16; };
  return {boundary(index), boundary(index + 1)};
}

ElementRange ParamStore::moment_range(ParamKind k) const {
  return moment_part(k, moment_parts(k), moment_index(k));
}

void ParamStore::set_bf16_shadows(bool on) {
  SY_CHECK(!finalized_, "ParamStore::set_bf16_shadows after finalize");
  bf16_shadows_ = on;
}

void ParamStore::refresh_shadows(Ctx& ctx) {
  SY_CHECK(finalized_, "refresh_shadows before finalize");
  if (!bf16_shadows_) return;
  for (ParamArena& a : arenas_)
    if (a.numel() > 0) ops::to_bf16(ctx, a.value_bf16, a.value);
}

std::vector<Param*> ParamStore::all() const {
  std::vector<Param*> out;
  for (auto& p : params_) out.push_back(p.get());
  return out;
}

Param* ParamStore::find(const std::string& name) const {
  for (auto& p : params_)
    if (p->name == name) return p.get();
  return nullptr;
}

void ParamStore::zero_grad(Ctx& ctx) {
  SY_CHECK(finalized_, "zero_grad before finalize");
  SY_CHECK(!inference_only_, "zero_grad: a model built for inference only has no gradients");
  arena(ParamKind::dense).grad.zero(ctx);
  for (auto& p : params_)
    if (p->expert()) p->grad_unwritten = true;
}

bool ParamStore::grads_pending() const {
  for (const auto& p : params_)
    if (p->grad_unwritten) return true;
  return false;
}

void ParamStore::finish_grads(Ctx& ctx) {
  for (auto& p : params_)
    if (p->grad_unwritten) {
      p->grad.zero(ctx);
      p->grad_unwritten = false;
    }
}

int64_t ParamStore::numel(ParamKind k) const {
  if (finalized_) return arena(k).numel();
  int64_t n = 0;
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i]->kind == k) n += static_cast<int64_t>(staged_[i].size());
  return n;
}

int64_t ParamStore::numel() const {
  int64_t n = 0;
  for (const ParamArena& a : arenas_) n += a.numel();
  if (!finalized_)
    for (const auto& w : staged_) n += static_cast<int64_t>(w.size());
  return n;
}

}  // namespace sy
