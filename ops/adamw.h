// AdamW (Loshchilov & Hutter 2019) with fp32 state, and global-norm clipping.
//
//   m = b1 m + (1-b1) g          v = b2 v + (1-b2) g^2
//   mhat = m / (1 - b1^t)        vhat = v / (1 - b2^t)
//   w -= lr * (mhat / (sqrt(vhat) + eps) + wd * w)     (wd only where decay)
//
// Clipping: norm = sqrt(sum over all grads of g^2); if norm > max_norm every
// gradient is scaled by max_norm / norm (Pascanu et al. 2013).
//
// Multi-tensor: one call updates a list of parameters (one kernel launch per
// list on a device, as llm.c and Apex do).
//
// bf16 shadows (Config.precision BF16): a parameter with a shadow gets
// shadow = bf16(w) of the updated w (round to nearest even, core/dtype.h),
// written by the same kernel on a device (no second pass over w); the bf16
// GEMMs read it (ops/matmul.h). w, m and v stay fp32 (the master copy).
#pragma once
#include <vector>

#include "core/tensor.h"

namespace sy::ops {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.f;
  // Every gradient is read as g * grad_scale (one rounding): clipping's
  // factor (clip_scale) applied as the update reads g, the bits clip_to_norm
  // would have written, without its pass over the gradients (a read and a
  // write of every one: 15 GB a step for switch_gpu's 1.9B parameters).
  float grad_scale = 1.f;
};

// Clipping's factor: max_norm / norm when norm > max_norm > 0, else 1.
inline float clip_scale(float norm, float max_norm) {
  return max_norm <= 0 || norm <= max_norm ? 1.f : max_norm / norm;  // (a NaN norm: NaN, as ever)
}

// One parameter's tensors, all of its shape (fp32).
struct AdamWParam {
  Tensor* value;
  const Tensor* grad;
  Tensor* m;
  Tensor* v;
  bool decay;  // weight decay applies (matrices); false for biases, norms, embeddings
  Tensor* shadow = nullptr;  // bf16, value's shape, or null: no shadow
};

// step counts from 1.
void adamw_update(Ctx& ctx, const std::vector<AdamWParam>& params, const AdamWConfig& c, int64_t step);

// Sum of squares over the tensors (fixed order, double accumulation).
double grad_sq_sum(Ctx& ctx, const std::vector<const Tensor*>& grads);
// Scales by max_norm / norm when norm > max_norm > 0.
void clip_to_norm(Ctx& ctx, const std::vector<Tensor*>& grads, float norm, float max_norm);

namespace cpu {
void adamw_update(Ctx& ctx, const std::vector<AdamWParam>& params, const AdamWConfig& c, int64_t step);
double grad_sq_sum(Ctx& ctx, const std::vector<const Tensor*>& grads);
void clip_to_norm(Ctx& ctx, const std::vector<Tensor*>& grads, float norm, float max_norm);
}  // namespace cpu

// The CUDA kernels (ops/cuda/adamw.cu; CUDA builds).
namespace cuda {
void adamw_update(Ctx& ctx, const std::vector<AdamWParam>& params, const AdamWConfig& c, int64_t step);
double grad_sq_sum(Ctx& ctx, const std::vector<const Tensor*>& grads);
void clip_to_norm(Ctx& ctx, const std::vector<Tensor*>& grads, float norm, float max_norm);
}  // namespace cuda

}  // namespace sy::ops
