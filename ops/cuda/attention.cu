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

Geom geom(const AttentionShape& s) {
  Geom g;
  g.B = static_cast<int>(s.B);
  g.H = static_cast<int>(s.H);
  g.heads = static_cast<int>(s.active_heads());
  g.T = static_cast<int>(s.T);
  g.C = s.C;
  g.ld_qkv = 3 * s.C;
  g.ld_out = s.C;
  g.scale = 1.f / std::sqrt(static_cast<float>(s.C / s.H));
  return g;
}

// Calls f(mask) with the shape's mask: a window shorter than the sequence,
// or the causal mask (which a window of T keys or more is).
template <class F>
void with_mask(const AttentionShape& s, F&& f) {
  if (s.window > 0 && s.window < s.T) return f(WindowMask{static_cast<int>(s.window)});
  f(CausalMask{});
}

void check_size(const char* op, const AttentionShape& s) {
  if (s.T > INT32_MAX / 2 || s.B > 65535 || s.H > 65535)
    throw BackendError(std::string(op) + ": B, H up to 65535 and T up to 2^30 on CUDA");
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
