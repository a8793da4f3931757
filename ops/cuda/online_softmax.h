// A running softmax over a stream of values (Milakov & Gimelshein 2018,
// "Online normalizer calculation for softmax"), for ops/cuda/cross_entropy.cu:
// each thread of a row keeps m, the largest value it has seen, and
// s = sum e^(x - m) over its values, rescaled when m grows; the row's
// normaliser is then Z = sum_t s_t e^(m_t - M) with M = max_t m_t, in a
// fixed order (the kernel's block_sum). One read of the row where a max pass
// and a sum pass read it twice. tests/online_softmax_test.cc replays a row's
// threads on the host, dealt its elements as the kernel deals them
// (split_row below). No CUDA headers: SY_HD is __host__ __device__ under
// nvcc only.
#pragma once
#include <math.h>

#include "ops/cuda/host_device.h"  // SY_HD

namespace sy::ops {

struct OnlineSoftmax {
  float m = -INFINITY, s = 0.f;

  // A -inf value adds nothing (e^-inf); NaN is never the max and makes s NaN.
  SY_HD void add(float x) {
    if (x > m) {                  // (false for NaN: it goes to the sum)
      s = s * expf(m - x) + 1.f;  // (the first finite value: s is 0, e^-inf 0)
      m = x;
    } else if (x != -INFINITY) {
      s += expf(x - m);
    }
  }

  // Two running sums as one (ops/cuda/sinkhorn.cu's warp and chunk merges):
  // the larger m, each s rescaled to it. Where neither saw a finite value
  // (m = -inf) s is the sum of theirs: 0, or NaN where one saw a NaN, which
  // must survive the merge as add() keeps it.
  SY_HD static OnlineSoftmax merge(const OnlineSoftmax& a, const OnlineSoftmax& b) {
    OnlineSoftmax o;
    o.m = a.m > b.m ? a.m : b.m;  // (m is never NaN: add sends NaN to s)
    if (o.m == -INFINITY) {
      o.s = a.s + b.s;
      return o;
    }
    o.s = (a.s == 0.f ? 0.f : a.s * expf(a.m - o.m)) + (b.s == 0.f ? 0.f : b.s * expf(b.m - o.m));
    return o;
  }
  // log sum e^x: -inf for no finite value, NaN where a NaN was added.
  SY_HD float log_sum_exp() const { return m + logf(s); }

  // This thread's part of Z given the row's max M: none where it saw no value
  // above -inf (s is 0; a NaN it saw is in s and reaches Z).
  SY_HD double share(float M) const { return s == 0.f ? 0.0 : static_cast<double>(s) * exp(static_cast<double>(m) - M); }
};

// Row n of a 16-byte aligned (N, V) fp32 array as ops/cuda/cross_entropy.cu
// reads it, in 16-byte vectors whatever V: its head (the elements before
// its first 16-byte boundary) and tail (after its last) one element a
// thread, its body in float4s from element head on; head + 4 body + tail = V.
struct RowSplit {
  int64_t head, body, tail;
};
SY_HD inline RowSplit split_row(int64_t n, int64_t V) {
  int64_t head = (4 - n * V % 4) % 4;
  if (head > V) head = V;
  const int64_t body = (V - head) / 4;
  return {head, body, V - head - 4 * body};
}

}  // namespace sy::ops
