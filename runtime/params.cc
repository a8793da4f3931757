#include "runtime/params.h"

namespace sy {

Param* ParamStore::add(const std::string& name, Shape shape, Rng& rng, float std, bool decay,
                       float fill) {
  SY_CHECK(!find(name), "duplicate parameter name " << name);
  auto p = std::make_unique<Param>();
  p->name = name;
  p->value = Tensor(shape);
  p->grad = Tensor(shape);
  p->m = Tensor(shape);
  p->v = Tensor(shape);
  p->decay = decay;
  float* w = p->value.f32();
  for (int64_t i = 0; i < p->value.numel(); ++i)
    w[i] = std != 0.f ? static_cast<float>(rng.normal() * std) : fill;
  params_.push_back(std::move(p));
  return params_.back().get();
}

Param* ParamStore::add_rows(const std::string& name, Shape full, int64_t begin, int64_t end, Rng& rng,
                            float std, bool decay) {
  int64_t row = 1;
  for (size_t i = 1; i < full.size(); ++i) row *= full[i];
  Shape shard = full;
  shard[0] = end - begin;
  Param* p = add(name, shard, rng, 0.f, decay);
  float* w = p->value.f32();
  for (int64_t i = 0; i < full[0] * row; ++i) {
    const float v = std != 0.f ? static_cast<float>(rng.normal() * std) : 0.f;
    if (i >= begin * row && i < end * row) w[i - begin * row] = v;
  }
  return p;
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

void ParamStore::zero_grad() {
  for (auto& p : params_) p->grad.zero();
}

int64_t ParamStore::numel() const {
  int64_t n = 0;
  for (auto& p : params_) n += p->value.numel();
  return n;
}

}  // namespace sy
