// SwiGLU on CUDA (equations in ops/swiglu.h) as functions of one element
// index i = n * H + j (gate g = x[n, j], up u = x[n, H + j]): ops/cuda/swiglu.cu
// gives every index its own thread (a grid-stride loop);
// tests/model_options_rows_test.cc runs the same functions on the host
// against the CPU reference. The CPU's arithmetic in the same order (expf on
// the device is within 2 ulp of libm's: class F). Elementwise, one owner per
// output: deterministic. No CUDA headers: SY_HD is __host__ __device__ under
// nvcc only.
#pragma once
#include <math.h>

#include <cstdint>

#include "ops/cuda/host_device.h"  // SY_HD

namespace sy::ops::swiglu_rows {

// One element's arithmetic, shared by the functions of an index below and
// the CUDA kernels' packs (ops/cuda/swiglu.cu): the same bits either way.
// y = silu(g) * u = g / (1 + e^-g) * u
SY_HD inline float value_of(float g, float u) { return g / (1.f + expf(-g)) * u; }
// With s = sigmoid(g): dg = dy u s (1 + g (1 - s)), du = dy g s.
SY_HD inline void grads_of(float dy, float g, float u, float& dg, float& du) {
  const float s = 1.f / (1.f + expf(-g));
  dg = dy * u * s * (1.f + g * (1.f - s));
  du = dy * g * s;
}

// y = silu(g) * u = g / (1 + e^-g) * u
struct Forward {
  float* y;        // (N, H)
  const float* x;  // (N, 2H)
  int64_t H;
  SY_HD float value(int64_t i) const {
    const int64_t n = i / H, j = i % H;
    return value_of(x[n * 2 * H + j], x[n * 2 * H + H + j]);
  }
  SY_HD void operator()(int64_t i) const { y[i] = value(i); }
};

// With s = sigmoid(g): dg += dy u s (1 + g (1 - s)), du += dy g s.
struct Backward {
  float* dx;        // (N, 2H), accumulated
  const float* dy;  // (N, H)
  const float* x;   // (N, 2H)
  int64_t H;
  // Element i's gate and up gradients, and where they go in dx.
  SY_HD void grads(int64_t i, int64_t& gi, float& dg, float& du) const {
    const int64_t n = i / H, j = i % H;
    gi = n * 2 * H + j;
    grads_of(dy[i], x[gi], x[gi + H], dg, du);
  }
  SY_HD void operator()(int64_t i) const {
    int64_t gi;
    float dg, du;
    grads(i, gi, dg, du);
    dx[gi] += dg;
    dx[gi + H] += du;
  }
};

}  // namespace sy::ops::swiglu_rows
