// RoPE on CUDA (equations in ops/rope.h) as one function of one (row, pair)
// index: ops/cuda/rope.cu gives every index its own thread (a grid-stride
// loop); tests/model_options_rows_test.cc runs the same function on the host
// against the CPU reference. No CUDA headers: SY_HD is __host__ __device__
// under nvcc only.
//
// Index i = n * (D/2) + j: row n at position p (positions[n], or n mod
// seq_len), pair j of every rotated head. theta_j = base^(-2j/D) and the
// angle p theta_j in double, cos and sin in double rounded to f32, as the CPU
// does (fp32 angles would be off by ~1e-3 rad at positions in the tens of
// thousands); then for each head h the pair (h*D + j, h*D + j + D/2) turns by
// +angle (forward) or -angle (backward: the transpose of the rotation).
// Each thread owns its pair in every head: in place, no races.
#pragma once
#include <math.h>

#include <cstdint>

#include "ops/cuda/host_device.h"  // SY_HD

namespace sy::ops::rope_rows {

struct Rotate {
  float* x;                // (N, W), in place
  const int32_t* pos;      // (N) or null: row n at n mod seq_len
  int64_t W, seq_len, heads, D;
  double base;
  float sign;              // 1 forward, -1 backward

  int64_t count(int64_t N) const { return N * (D / 2); }

  SY_HD void operator()(int64_t i) const {
    const int64_t half = D / 2, n = i / half, j = i % half;
    const double p = pos ? static_cast<double>(pos[n]) : static_cast<double>(n % seq_len);
    const double theta = pow(base, -2.0 * static_cast<double>(j) / static_cast<double>(D));
    const float cs = static_cast<float>(cos(p * theta));
    const float sn = sign * static_cast<float>(sin(p * theta));
    float* r = x + n * W + j;
    for (int64_t h = 0; h < heads; ++h, r += D) {
      const float x1 = r[0], x2 = r[half];
      r[0] = x1 * cs - x2 * sn;
      r[half] = x2 * cs + x1 * sn;
    }
  }
};

}  // namespace sy::ops::rope_rows
