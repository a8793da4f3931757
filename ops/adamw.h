// AdamW (Loshchilov & Hutter 2019) with fp32 state, and global-norm clipping.
//
//   m = b1 m + (1-b1) g          v = b2 v + (1-b2) g^2
//   mhat = m / (1 - b1^t)        vhat = v / (1 - b2^t)
//   w -= lr * (mhat / (sqrt(vhat) + eps) + wd * w)     (wd only where decay)
//
// Clipping: norm = sqrt(sum over all grads of g^2); if norm > max_norm every
// gradient is scaled by max_norm / norm (Pascanu et al. 2013).
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
};

// step counts from 1.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWConfig& c,
                  int64_t step, bool decay);

// Returns the global norm before clipping; scales the grads in place when it
// exceeds max_norm (max_norm <= 0 disables clipping).
float clip_grad_norm(const std::vector<Tensor*>& grads, float max_norm);
// The two halves, for a norm whose squares are summed across ranks first.
double grad_sq_sum(const std::vector<Tensor*>& grads);
// Scales by max_norm / norm when norm > max_norm > 0.
void clip_to_norm(const std::vector<Tensor*>& grads, float norm, float max_norm);

}  // namespace sy::ops
