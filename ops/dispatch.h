// Moving rows along a Route (ops/routing.h).
//
// dispatch:  buf[row(a)] = x[i]                   for every kept assignment a = (i, j)
// combine:   y[i] = sum_j weight[a] * out[row(a)]  (kept a only, j in order: no
//            atomics, the same sum in the same order every run)
// Backward:
//   dispatch: dx[i] += dbuf[row(a)]
//   combine:  dout[row(a)] = weight[a] * dy[i];  dweight[a] = dy[i] . out[row(a)]
// Shapes: x, y (N, D); buf, out (route.rows(), D); dweight (N*k).
// Dropped and unused assignments move nothing and get dweight 0.
#pragma once
#include <vector>

#include "ops/routing.h"
#include "core/tensor.h"

namespace sy::ops {

void dispatch_forward(Tensor& buf, const Tensor& x, const Route& r);
void dispatch_backward(Tensor& dx, const Tensor& dbuf, const Route& r);
void combine_forward(Tensor& y, const Tensor& out, const Route& r);
void combine_backward(Tensor& dout, std::vector<float>& dweight, const Tensor& dy,
                      const Tensor& out, const Route& r);

}  // namespace sy::ops
