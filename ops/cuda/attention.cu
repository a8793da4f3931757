// Dense causal attention on CUDA and its sliding window (ops/attention.h):
// the entry points over the kernels of ops/cuda/attention_kernels.cuh, with
// CausalMask and WindowMask.
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "ops/cuda/attention_kernels.cuh"

namespace sy::ops::cuda {

namespace {

// Calls f(mask) with the shape's mask: a window shorter than the sequence,
// or the causal mask (which a window of T keys or more is).
template <class F>
void with_mask(const AttentionShape& s, F&& f) {
  if (s.window > 0 && s.window < s.T) return f(WindowMask{static_cast<int>(s.window)});
  f(CausalMask{});
}

}  // namespace

void attention_forward(Ctx& ctx, const AttentionArgs& a) {
  const AttentionShape& s = a.shape;
  if (s.B == 0 || s.T == 0) return;
  check_size("attention_forward", s);
  check_aligned("attention_forward", {a.qkv.raw(), a.out.raw()});
  const Geom g = geom(s);
  with_mask(s, [&](auto mask) {
    forward_any("attention_forward", g, mask, a.qkv, a.out, a.lse.data<float>(), s.C / s.H, stream_of(ctx));
  });
}

void attention_backward(Ctx& ctx, const AttentionBackwardArgs& a) {
  const AttentionShape& s = a.shape;
  if (s.B == 0 || s.T == 0) return;
  check_size("attention_backward", s);
  check_aligned("attention_backward", {a.qkv.raw(), a.dqkv.raw(), a.dout.raw(), a.out.raw()});
  const Geom g = geom(s);
  with_mask(s, [&](auto mask) {
    backward_any("attention_backward", ctx, g, mask, s.B * s.T, a.dqkv, a.dout, a.qkv, a.out, a.lse.data<float>(),
                 s.C / s.H);
  });
}

}  // namespace sy::ops::cuda
