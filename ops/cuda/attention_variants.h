// Tile configurations of the bf16 causal attention kernels beside the
// defaults (ops/cuda/attention_kernels.cuh's Configs<D>), for one GPU run to
// time side by side (bench_ops' attention_variant_* rows) and
// backend_ops_test to check against the CPU. Which one becomes the default
// is a measurement (docs/PERF.md); no training path runs them until then.
// CUDA builds only.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ops/attention.h"

namespace sy::ops::cuda {

struct AttentionVariant {
  std::string name;  // "default", "fwd_qreg", ...
  std::string what;  // its tiles, in words
  bool forward;      // it changes the forward's kernel (else the backward's; the default: both)
};

// The variants at head dim D (64 or 128; none at others): [0] is the default.
std::vector<AttentionVariant> attention_variants(int64_t D);

// ops::attention_forward / attention_backward with variant v's kernels:
// bf16, causal (no window), head dim 64 or 128; the part v leaves alone runs
// the default. Anything else is refused (BackendError).
void attention_forward_variant(Ctx& ctx, const AttentionArgs& a, size_t v);
void attention_backward_variant(Ctx& ctx, const AttentionBackwardArgs& a, size_t v);

}  // namespace sy::ops::cuda
