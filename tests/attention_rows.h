// What routed_attention_rows_test.cc and sparse_attention_rows_test.cc share:
// the host's stand-ins for a kernel launch (a thread an index, a warp of 32
// threads an index), random heads, and the comparison
// of the CUDA path's results with the CPU reference's (class F: within 1e-5
// relative L2; lse's -inf entries exactly where the reference has them).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "grad_check.h"

namespace sy::testing {

// run(n, f): the host's stand-in for one kernel launch.
struct HostRun {
  template <class F>
  void operator()(int64_t n, const F& f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
};

// warps(n, f) of the step sequences on the host: f(w, i) for every i < n on
// one warp of 32 threads, lane l running f with w.lane() = l; w.sum(x) waits
// for every lane's x and returns the butterfly sum of ops/cuda/common.cuh's
// warp_sum (offsets 16, 8, 4, 2, 1), the same bits on every lane.
class HostWarps {
 public:
  template <class F>
  void operator()(int64_t n, const F& f) const {
    Meeting m;
    std::vector<std::thread> lanes;
    for (int l = 0; l < 32; ++l)
      lanes.emplace_back([&, l] {
        const Lane w{&m, l};
        for (int64_t i = 0; i < n; ++i) f(w, i);
      });
    for (std::thread& t : lanes) t.join();
  }

 private:
  struct Meeting {
    std::atomic<int> arrived{0};
    std::atomic<int64_t> round{0};
    float x[2][32] = {};  // sum s writes x[s % 2]: a lane at sum s + 2 has passed the barrier of s + 1,
                          // so every lane has read sum s's values by then
    // Returns once all 32 lanes have called it (a sense-reversing barrier;
    // waiting lanes yield their core, 32 threads sharing a few).
    void wait_all() {
      const int64_t r = round.load(std::memory_order_acquire);
      if (arrived.fetch_add(1, std::memory_order_acq_rel) == 31) {
        arrived.store(0, std::memory_order_relaxed);
        round.store(r + 1, std::memory_order_release);
      } else {
        // (a lane that skips a sum another makes would leave the rest here:
        // a failure after a minute, not a hang)
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (round.load(std::memory_order_acquire) == r) {
          std::this_thread::yield();
          if (std::chrono::steady_clock::now() > deadline) {
            std::fprintf(stderr, "HostWarps: the lanes of a warp did not all reach a sum within 60 s\n");
            std::abort();
          }
        }
      }
    }
  };
  struct Lane {
    Meeting* m;
    int l;
    mutable int64_t sums = 0;  // this lane's sums so far (the same on every lane)
    int lane() const { return l; }
    float sum(float x) const {
      float* slot = m->x[sums++ % 2];
      slot[l] = x;
      m->wait_all();  // every x in
      float v[32];
      std::copy(slot, slot + 32, v);
      for (int o = 16; o > 0; o >>= 1) {
        float nv[32];
        for (int i = 0; i < 32; ++i) nv[i] = v[i] + v[i ^ o];
        std::copy(nv, nv + 32, v);
      }
      return v[l];
    }
  };
};

struct Grads {
  Tensor dq, dk, dv;
};

// Random q, k, v, dout, and the starting values of dq, dk, dv (they accumulate).
struct Case {
  Tensor q, k, v, dout;
  Grads start;
};

inline Case random_case(int64_t T, int64_t D, Rng& rng) {
  return {randn({T, D}, rng), randn({T, D}, rng), randn({T, D}, rng), randn({T, D}, rng),
          {randn({T, D}, rng), randn({T, D}, rng), randn({T, D}, rng)}};
}

// ||got - want|| / ||want||.
inline double rel_l2(const Tensor& got, const Tensor& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double d = static_cast<double>(got.f32()[i]) - want.f32()[i];
    num += d * d;
    den += static_cast<double>(want.f32()[i]) * want.f32()[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// lse: the same -inf entries, the finite ones within 1e-5 relative L2.
inline void expect_lse(const Tensor& got, const Tensor& want) {
  Tensor g = got.clone(), w = want.clone();
  for (int64_t t = 0; t < w.numel(); ++t) {
    ASSERT_EQ(std::isinf(g.f32()[t]), std::isinf(w.f32()[t])) << "lse " << t << ": " << g.f32()[t] << " vs " << w.f32()[t];
    if (std::isinf(w.f32()[t])) g.f32()[t] = w.f32()[t] = 0.f;
  }
  EXPECT_LE(rel_l2(g, w), 1e-5) << "lse";
}

// Columns [c0, c0 + D) of packed (R, 3D) rows [q | k | v] (the varlen kernels' layout).
inline Tensor columns(const Tensor& qkv, int64_t c0, int64_t D) {
  const int64_t R = qkv.dim(0);
  Tensor t = zeros({R, D});
  for (int64_t i = 0; i < R; ++i) std::copy_n(qkv.f32() + i * 3 * D + c0, D, t.f32() + i * D);
  return t;
}

// A tensor of NaN: an output that must be written everywhere.
inline Tensor poisoned(Shape shape) {
  Tensor t = zeros(std::move(shape));
  t.fill(NAN);
  return t;
}

// dq, dk, dv within 1e-5 relative L2 of the reference's, every element finite.
inline void expect_grads(const Grads& got, const Grads& want) {
  EXPECT_LE(rel_l2(got.dq, want.dq), 1e-5) << "dq";
  EXPECT_LE(rel_l2(got.dk, want.dk), 1e-5) << "dk";
  EXPECT_LE(rel_l2(got.dv, want.dv), 1e-5) << "dv";
  for (const Tensor* t : {&got.dq, &got.dk, &got.dv})
    for (int64_t i = 0; i < t->numel(); ++i) ASSERT_TRUE(std::isfinite(t->f32()[i])) << "gradient element " << i;
}

}  // namespace sy::testing
