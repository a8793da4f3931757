#include "ops/dispatch.h"

#include <algorithm>

namespace sy::ops {

namespace {
void check(const Tensor& tokens, const Tensor& rows, const Route& r, const char* what) {
  SY_CHECK(tokens.ndim() == 2 && tokens.dim(0) == r.num_items,
           what << ": token tensor " << shape_str(tokens.shape()) << " for " << r.num_items << " items");
  check_shape(rows, {r.rows(), tokens.dim(1)}, what);
}
}  // namespace

void dispatch_forward(Tensor& buf, const Tensor& x, const Route& r) {
  check(x, buf, r, "dispatch buf");
  const int64_t D = x.dim(1);
  for (int64_t a = 0; a < r.num_items * r.k; ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    std::copy_n(x.f32() + (a / r.k) * D, D, buf.f32() + row * D);
  }
}

void dispatch_backward(Tensor& dx, const Tensor& dbuf, const Route& r) {
  check(dx, dbuf, r, "dispatch dbuf");
  const int64_t D = dx.dim(1);
  for (int64_t a = 0; a < r.num_items * r.k; ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    float* d = dx.f32() + (a / r.k) * D;
    const float* s = dbuf.f32() + row * D;
    for (int64_t c = 0; c < D; ++c) d[c] += s[c];
  }
}

void combine_forward(Tensor& y, const Tensor& out, const Route& r) {
  check(y, out, r, "combine out");
  const int64_t D = y.dim(1);
  y.zero();
  for (int64_t a = 0; a < r.num_items * r.k; ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    float* d = y.f32() + (a / r.k) * D;
    const float* s = out.f32() + row * D;
    const float w = r.weight[a];
    for (int64_t c = 0; c < D; ++c) d[c] += w * s[c];
  }
}

void combine_backward(Tensor& dout, std::vector<float>& dweight, const Tensor& dy,
                      const Tensor& out, const Route& r) {
  check(dy, out, r, "combine out");
  check_shape(dout, out.shape(), "combine dout");
  const int64_t D = dy.dim(1);
  dweight.assign(r.num_items * r.k, 0.f);
  for (int64_t a = 0; a < r.num_items * r.k; ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    const float* g = dy.f32() + (a / r.k) * D;
    const float* o = out.f32() + row * D;
    float* d = dout.f32() + row * D;
    float dot = 0;
    for (int64_t c = 0; c < D; ++c) {
      d[c] = r.weight[a] * g[c];
      dot += g[c] * o[c];
    }
    dweight[a] = dot;
  }
}

}  // namespace sy::ops
