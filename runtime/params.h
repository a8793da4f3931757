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
//
// bf16 shadows (Config.precision BF16, set_bf16_shadows before finalize): a
// fifth arena per kind, bf16, with value_bf16 = bf16(value) for every Param,
// which the bf16 GEMMs read. AdamW writes it with each update (ops/adamw.h);
// whoever writes values otherwise (finalize, a checkpoint load, an import)
// calls refresh_shadows. Checkpoints hold the fp32 values only.
//
// Sharded moments (parallel.shard_optimizer, set_moment_shard before
// finalize): of a kind's arena this rank keeps m and v of elements
// moment_range(kind) only, part `index` of `parts` (contiguous; a part may
// be empty where the arena has fewer than 16 elements a part); the arena's m
// and v hold that range, and a Param's m and v are
// undefined (runtime/optimizer_shard.h reads and writes the pieces).
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
  Tensor m, v;         // AdamW moments, fp32 (undefined where the moments are sharded)
  Tensor value_bf16;   // bf16(value), the GEMMs' copy; undefined without shadows
  bool decay = true;   // weight decay applies (matrices); false for biases, norms
  ParamKind kind = ParamKind::dense;  // expert: sharded under expert parallelism
  int64_t offset = 0;  // elements into its kind's arenas
  // The gradient holds no value yet this step (ParamStore::zero_grad marks
  // expert parameters so instead of filling them with zeros): the next
  // backward writes it rather than adding to it, then clears the mark.
  bool grad_unwritten = false;
  // The whole tensor is rows_total rows, stored one after the other, that
  // every expert-parallel size draws alike; this Param holds rows [row_begin,
  // row_begin + local_rows()) (an expert shard: a row is one expert's piece).
  // Rows have shape shape[1:] (add, add_rows: a whole parameter is rows 0..
  // shape[0]) unless row_shapes is set (add_packed_rows: experts of different
  // sizes, row g of shape row_shapes[g], the Param flat).
  int64_t row_begin = 0, rows_total = 0;
  std::vector<Shape> row_shapes;   // (rows_total) or empty: every row shape[1:]
  std::vector<int64_t> row_start;  // (rows_total + 1) with row_shapes: element offsets
  bool expert() const { return kind == ParamKind::expert; }
  Shape row_shape(int64_t g) const;
  // Element offset of row g in the whole tensor, g in [0, rows_total].
  int64_t row_offset(int64_t g) const;
  int64_t local_rows() const;
  // This Param's elements are [global_begin(), global_begin() + numel) of the
  // whole tensor's global_numel().
  int64_t global_begin() const { return row_offset(row_begin); }
  int64_t global_numel() const { return row_offset(rows_total); }
  // Local row i (of local_rows()) of value, grad, m or v as that row's tensor.
  Tensor local_row(const Tensor& t, int64_t i) const;
};

// [begin, end) of a kind's arena, in elements.
struct ElementRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// The arenas of one kind: four fp32, and the bf16 shadows where kept.
struct ParamArena {
  Tensor value, grad;        // (numel) each
  Tensor m, v;               // (numel), or (moment_range's size) where sharded
  Tensor value_bf16;         // (numel) bf16 shadows, or undefined
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
  // As add_rows for rows of different shapes (`rows`, all of them), packed
  // one after the other: draws the whole tensor and keeps rows [begin, end),
  // flat. Experts of different sizes.
  Param* add_packed_rows(const std::string& name, const std::vector<Shape>& rows, int64_t begin, int64_t end,
                         Rng& rng, float std, bool decay, ParamKind kind = ParamKind::expert);
  // Keep no gradients and no AdamW moments (before finalize): a model that
  // is only evaluated (sample, export_hf, route_report) holds 4 bytes a
  // parameter where a trained one holds 16. Its Params' grad, m and v are
  // undefined; zero_grad refuses.
  void set_inference_only(bool on);
  bool inference_only() const { return inference_only_; }
  // Keep bf16 shadows of the values (before finalize).
  void set_bf16_shadows(bool on);
  bool has_bf16_shadows() const { return bf16_shadows_; }
  // Keep the moments of part `index` of `parts` of kind k's arena only
  // (before finalize; parts 1: all of them, as without).
  void set_moment_shard(ParamKind k, int parts, int index);
  // Part i of n of a kind's arena: [b(i), b(i + 1)), b(i) = numel i / n
  // rounded down to a multiple of 16 elements (b(n) = numel).
  ElementRange moment_part(ParamKind k, int parts, int index) const;
  // The elements whose moments this rank keeps; all of the arena unsharded.
  ElementRange moment_range(ParamKind k) const;
  int moment_parts(ParamKind k) const { return moment_parts_[static_cast<int>(k)]; }
  int moment_index(ParamKind k) const { return moment_index_[static_cast<int>(k)]; }
  bool moments_sharded() const { return moment_parts_[0] > 1 || moment_parts_[1] > 1; }
  // Allocates the arenas on ctx's device and makes every Param's tensors views.
  void finalize(Ctx& ctx);
  // value_bf16 = bf16(value) over both arenas; nothing without shadows.
  void refresh_shadows(Ctx& ctx);
  bool finalized() const { return finalized_; }

  std::vector<Param*> all() const;
  Param* find(const std::string& name) const;
  const ParamArena& arena(ParamKind k) const { return arenas_[static_cast<int>(k)]; }
  ParamArena& arena(ParamKind k) { return arenas_[static_cast<int>(k)]; }
  // Zeroes every gradient before a step's first backward: the dense arena
  // is filled with zeros; expert parameters are marked grad_unwritten
  // instead, and the experts' first backward writes their gradients (beta 0
  // in the GEMMs, zeros for an expert without rows: ops/expert_ffn.h's
  // grads_accumulate) rather than adding to a fill, so each expert gradient
  // element is not written and read back once more a step (switch_gpu: 1.8
  // G of them, ~14 GB). finish_grads() zero-fills those still unwritten (a
  // layer whose backward did not run); Transformer::backward ends with it.
  void zero_grad(Ctx& ctx);
  void finish_grads(Ctx& ctx);
  // Whether some gradient is still unwritten (its values meaningless): what
  // reads them all (the norm, the reducer) refuses to.
  bool grads_pending() const;
  int64_t numel() const;
  // Elements of one kind added so far: the arena offset the next one gets.
  int64_t numel(ParamKind k) const;

 private:
  std::vector<std::unique_ptr<Param>> params_;
  void keep_slice(const std::string& name, int64_t whole, int64_t begin, int64_t end, Rng& rng, float std);
  std::vector<std::vector<float>> staged_;  // initial values until finalize()
  ParamArena arenas_[2];
  int moment_parts_[2] = {1, 1}, moment_index_[2] = {0, 0};
  bool finalized_ = false;
  bool bf16_shadows_ = false;
  bool inference_only_ = false;
};

}  // namespace sy
