// Moving rows along a Route (ops/routing.h).
//
// dispatch:  buf[row(a)] = x[i]                   for every kept assignment a = (i, j)
// combine:   y[i] = sum_j weight[a] * out[row(a)]  (kept a only, j in order: no
//            atomics, the same sum in the same order every run)
// Backward:
//   dispatch: dx[i] += dbuf[row(a)]
//   combine:  dout[row(a)] = weight[a] * dy[i];  dweight[a] = dy[i] . out[row(a)]
// Shapes: x, y (N, D); buf, out (route.rows(), D); dweight (N*k).
// Dropped and unused assignments move nothing and get dweight 0. dispatch
// and combine_backward write every row of buf and dout: a padded route's
// rows that no kept assignment owns (group g's rows past count[g]) are set
// to 0, so they stay finite through the experts and add nothing to the
// weight gradients; a fresh buffer needs no zero fill. combine overwrites y,
// combine_backward overwrites dweight; dispatch_backward adds into dx, or
// with accumulate false writes it (every item: its rows' sum from 0, the
// bits of a zero fill and the adds, without the fill or the read of dx).
// buf may be bf16 (x f32): buf[row(a)] = bf16(x[i]), the experts' GEMM
// operand rounded as it is moved (one pass, not an f32 copy and a rounding
// pass); so may combine_backward's dout (dy, out f32): dout[row(a)] =
// bf16(weight[a] * dy[i]), the experts' backward operand (dweight from the
// f32 dy and out as ever). Everything else is f32.
//
// residual_combine (adaptive depth, k = 1): the block's output z on the kept
// rows mixed into the residual stream x with weights w (N):
//   y_i = (1 - w_i) x_i + w_i z[row(i)]   kept i      (w_i = 1 gives z exactly)
//   y_i = x_i                             otherwise   (bit-identical: nothing added)
// Backward: dz[row(i)] = w_i dy_i; dx_i += (1 - w_i) dy_i (kept) or dy_i;
//   dw_i = dy_i . (z[row(i)] - x_i) (0 where not kept). dz, dw overwritten.
//
// dispatch_positions: where in its sequence each buffer row's item sits,
//   pos[row(a)] = (a / k) mod segment   for every kept assignment a
// (sequences are runs of `segment` consecutive items), i32 (route.rows()).
// It is dispatch_forward of the column p_i = i mod segment without building
// that column: rotary embeddings rotate a depth-routed block's rows by these
// positions (runtime/model.cc), computed where the route lives, so the route
// never comes back to the host for them. segment >= 1.
#pragma once
#include "core/tensor.h"
#include "ops/backend.h"
#include "ops/routing.h"

namespace sy::ops {

void dispatch_forward(Ctx& ctx, Tensor& buf, const Tensor& x, const Route& r);
void dispatch_backward(Ctx& ctx, Tensor& dx, const Tensor& dbuf, const Route& r, bool accumulate = true);
void combine_forward(Ctx& ctx, Tensor& y, const Tensor& out, const Route& r);
void combine_backward(Ctx& ctx, Tensor& dout, Tensor& dweight, const Tensor& dy, const Tensor& out, const Route& r);

void residual_combine_forward(Ctx& ctx, Tensor& y, const Tensor& x, const Tensor& z, const Tensor& w, const Route& r);
void residual_combine_backward(Ctx& ctx, Tensor& dx, Tensor& dz, Tensor& dw, const Tensor& dy, const Tensor& x,
                               const Tensor& z, const Tensor& w, const Route& r);

void dispatch_positions(Ctx& ctx, Tensor& pos, const Route& r, int64_t segment);

// The CPU reference (ops/cpu/dispatch.cc) and the CUDA kernels (ops/cuda/dispatch.cu;
// CUDA builds): the entry points above, in cpu:: and cuda::.
SY_DECLARE_BACKENDS(
  void residual_combine_forward(Ctx& ctx, Tensor& y, const Tensor& x, const Tensor& z, const Tensor& w, const Route& r);
  void residual_combine_backward(Ctx& ctx, Tensor& dx, Tensor& dz, Tensor& dw, const Tensor& dy, const Tensor& x,
                                 const Tensor& z, const Tensor& w, const Route& r);
  void dispatch_forward(Ctx& ctx, Tensor& buf, const Tensor& x, const Route& r);
  void dispatch_backward(Ctx& ctx, Tensor& dx, const Tensor& dbuf, const Route& r, bool accumulate);
  void combine_forward(Ctx& ctx, Tensor& y, const Tensor& out, const Route& r);
  void combine_backward(Ctx& ctx, Tensor& dout, Tensor& dweight, const Tensor& dy, const Tensor& out, const Route& r);
  void dispatch_positions(Ctx& ctx, Tensor& pos, const Route& r, int64_t segment);
)

}  // namespace sy::ops
