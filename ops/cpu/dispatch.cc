#include "ops/dispatch.h"

#include <algorithm>
#include <cstring>

namespace sy::ops::cpu {

namespace {
// Group g's rows past its count set to 0: a padded route's unused rows
// (ops/dispatch.h); a route whose offsets are the counts' sums has none.
void zero_unused_rows(Tensor& rows, const Route& r) {
  const int32_t* count = r.count.data<int32_t>();
  const int32_t* offset = r.offset.data<int32_t>();
  const size_t row_bytes = static_cast<size_t>(rows.dim(1)) * dtype_size(rows.dtype());
  char* base = static_cast<char*>(rows.raw());
  for (int64_t g = 0; g < r.num_groups; ++g) {
    const int64_t first = offset[g] + count[g], end = offset[g + 1];
    if (end > first) std::memset(base + first * row_bytes, 0, (end - first) * row_bytes);
  }
}
}  // namespace

void dispatch_forward(Ctx&, Tensor& buf, const Tensor& x, const Route& r) {
  const int64_t D = x.dim(1);
  const bool bf16 = buf.dtype() == DType::bf16;
  for (int64_t a = 0; a < r.assignments(); ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    const float* src = x.f32() + (a / r.k) * D;
    if (bf16) {
      bf16_t* dst = buf.data<bf16_t>() + row * D;
      for (int64_t c = 0; c < D; ++c) dst[c].bits = f32_to_bf16(src[c]);
    } else {
      std::copy_n(src, D, buf.f32() + row * D);
    }
  }
  zero_unused_rows(buf, r);
}

void dispatch_backward(Ctx&, Tensor& dx, const Tensor& dbuf, const Route& r, bool accumulate) {
  const int64_t D = dx.dim(1);
  if (!accumulate) dx.zero();
  for (int64_t a = 0; a < r.assignments(); ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    float* d = dx.f32() + (a / r.k) * D;
    const float* s = dbuf.f32() + row * D;
    for (int64_t c = 0; c < D; ++c) d[c] += s[c];
  }
}

void combine_forward(Ctx&, Tensor& y, const Tensor& out, const Route& r) {
  const int64_t D = y.dim(1);
  const float* weight = r.weight.f32();
  y.zero();
  for (int64_t a = 0; a < r.assignments(); ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    float* d = y.f32() + (a / r.k) * D;
    const float* s = out.f32() + row * D;
    const float w = weight[a];
    for (int64_t c = 0; c < D; ++c) d[c] += w * s[c];
  }
}

void combine_backward(Ctx&, Tensor& dout, Tensor& dweight, const Tensor& dy, const Tensor& out, const Route& r) {
  const int64_t D = dy.dim(1);
  const float* weight = r.weight.f32();
  float* dw = dweight.f32();
  std::fill_n(dw, r.assignments(), 0.f);
  zero_unused_rows(dout, r);
  const bool bf16 = dout.dtype() == DType::bf16;
  for (int64_t a = 0; a < r.assignments(); ++a) {
    const int64_t row = r.row(a);
    if (row < 0) continue;
    const float* g = dy.f32() + (a / r.k) * D;
    const float* o = out.f32() + row * D;
    bf16_t* d16 = bf16 ? dout.data<bf16_t>() + row * D : nullptr;
    float* d32 = bf16 ? nullptr : dout.f32() + row * D;
    float dot = 0;
    for (int64_t c = 0; c < D; ++c) {
      const float d = weight[a] * g[c];
      if (d16)
        d16[c].bits = f32_to_bf16(d);
      else
        d32[c] = d;
      dot += g[c] * o[c];
    }
    dw[a] = dot;
  }
}

void residual_combine_forward(Ctx&, Tensor& y, const Tensor& x, const Tensor& z, const Tensor& w_t, const Route& r) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* w = w_t.f32();
  std::copy_n(x.f32(), N * C, y.f32());
  for (int64_t i = 0; i < N; ++i) {
    const int64_t row = r.row(i);
    if (row < 0) continue;
    float* yr = y.f32() + i * C;
    const float* zr = z.f32() + row * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = (1.f - w[i]) * yr[c] + w[i] * zr[c];
  }
}

void residual_combine_backward(Ctx&, Tensor& dx, Tensor& dz, Tensor& dw_t, const Tensor& dy, const Tensor& x,
                               const Tensor& z, const Tensor& w_t, const Route& r) {
  const int64_t N = x.dim(0), C = x.dim(1);
  const float* w = w_t.f32();
  float* dw = dw_t.f32();
  for (int64_t i = 0; i < N; ++i) {
    const float* g = dy.f32() + i * C;
    float* dxr = dx.f32() + i * C;
    const int64_t row = r.row(i);
    dw[i] = 0.f;
    if (row < 0) {
      for (int64_t c = 0; c < C; ++c) dxr[c] += g[c];
      continue;
    }
    const float* xr = x.f32() + i * C;
    const float* zr = z.f32() + row * C;
    float* dzr = dz.f32() + row * C;
    float d = 0;
    for (int64_t c = 0; c < C; ++c) {
      dzr[c] = w[i] * g[c];
      dxr[c] += (1.f - w[i]) * g[c];
      d += g[c] * (zr[c] - xr[c]);
    }
    dw[i] = d;
  }
}

void dispatch_positions(Ctx&, Tensor& pos, const Route& r, int64_t segment) {
  int32_t* p = pos.data<int32_t>();
  for (int64_t a = 0; a < r.assignments(); ++a) {
    const int64_t row = r.row(a);
    if (row >= 0) p[row] = static_cast<int32_t>((a / r.k) % segment);
  }
}

}  // namespace sy::ops::cpu
