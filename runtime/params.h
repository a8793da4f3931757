// Param: one trainable tensor with its gradient and AdamW state, and the
// ParamStore that owns all of a model's parameters in creation order (the
// order checkpoints, gradient all-reduce and the optimizer walk).
//
// Storage: contiguous arenas, one per kind (dense, expert) for each of value,
// grad, m and v; a Param's tensors are views into them at the same offset.
// Gradient all-reduce then runs in place on ranges of an arena (no copies),
// the optimizer and the norm walk a few large tensors, and expert parameters
// (sharded and reduced over their replicas only) are one range of their own.
//
// Life cycle: layers add() parameters while the model is built (values are
// drawn on the host, in creation order, so a seed means the same weights on
// every backend); finalize(ctx) then allocates the arenas on ctx's device and
// moves the values there. Values are views only after finalize().
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace sy {

enum class ParamKind { dense, expert };

struct Param {
  std::string name;
  Shape shape;
  Tensor value, grad;  // fp32
  Tensor m, v;         // AdamW moments, fp32
  bool decay = true;   // weight decay applies (matrices); false for biases, norms
  ParamKind kind = ParamKind::dense;  // expert: sharded under expert parallelism
  int64_t offset = 0;  // elements into its kind's arenas
  // add_rows: this is rows [row_begin, row_begin + shape[0]) of a tensor of
  // rows_total rows (an expert shard: a row is one expert); else 0, shape[0].
  int64_t row_begin = 0, rows_total = 0;
  bool expert() const { return kind == ParamKind::expert; }
};

// The four arenas of one kind.
struct ParamArena {
  Tensor value, grad, m, v;  // (numel) each
  int64_t numel() const { return value.defined() ? value.numel() : 0; }
};

class ParamStore {
 public:
  // Normal(0, std) init; std == 0 means zeros, fill != 0 means constant fill.
  Param* add(const std::string& name, Shape shape, Rng& rng, float std, bool decay, float fill = 0.f,
             ParamKind kind = ParamKind::dense);
  // Rows [begin, end) along dim 0 of a parameter of `full` shape: draws the
  // whole tensor's values from rng (so the stream, and every other parameter,
  // is the same as without sharding) and keeps the slice. Expert shards.
  Param* add_rows(const std::string& name, Shape full, int64_t begin, int64_t end, Rng& rng, float std,
                  bool decay, ParamKind kind = ParamKind::expert);
  // Allocates the arenas on ctx's device and makes every Param's tensors views.
  void finalize(Ctx& ctx);
  bool finalized() const { return finalized_; }

  std::vector<Param*> all() const;
  Param* find(const std::string& name) const;
  const ParamArena& arena(ParamKind k) const { return arenas_[static_cast<int>(k)]; }
  ParamArena& arena(ParamKind k) { return arenas_[static_cast<int>(k)]; }
  void zero_grad(Ctx& ctx);
  int64_t numel() const;
  // Elements of one kind added so far: the arena offset the next one gets.
  int64_t numel(ParamKind k) const;

 private:
  std::vector<std::unique_ptr<Param>> params_;
  std::vector<std::vector<float>> staged_;  // initial values until finalize()
  ParamArena arenas_[2];
  bool finalized_ = false;
};

}  // namespace sy
