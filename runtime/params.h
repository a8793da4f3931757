// Param: one trainable tensor with its gradient and AdamW state, and the
// ParamStore that owns all of a model's parameters in creation order (the
// order checkpoints, gradient all-reduce and the optimizer walk).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace sy {

struct Param {
  std::string name;
  Tensor value, grad;  // fp32
  Tensor m, v;         // AdamW moments, fp32
  bool decay = true;   // weight decay applies (matrices); false for biases, norms
  bool expert = false; // an expert's weight (sharded under expert parallelism)
};

class ParamStore {
 public:
  // Normal(0, std) init; std == 0 means zeros, fill != 0 means constant fill.
  Param* add(const std::string& name, Shape shape, Rng& rng, float std, bool decay,
             float fill = 0.f);
  // Rows [begin, end) along dim 0 of a parameter of `full` shape: draws the
  // whole tensor's values from rng (so the stream, and every other parameter,
  // is the same as without sharding) and keeps the slice. Expert shards.
  Param* add_rows(const std::string& name, Shape full, int64_t begin, int64_t end, Rng& rng, float std,
                  bool decay);
  std::vector<Param*> all() const;
  Param* find(const std::string& name) const;
  void zero_grad();
  int64_t numel() const;

 private:
  std::vector<std::unique_ptr<Param>> params_;
};

}  // namespace sy
