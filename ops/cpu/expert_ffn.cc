#include "ops/expert_ffn.h"

#include "ops/gelu.h"
#include "ops/matmul.h"

namespace sy::ops {

namespace {
struct Dims {
  int64_t G, D, H, R;
};
Dims check(const Tensor& buf, const Tensor& pre, const std::vector<int32_t>& offset,
           const ExpertWeights& w) {
  const int64_t G = w.w1.dim(0), D = w.w1.dim(1), H = w.w1.dim(2), R = buf.dim(0);
  check_shape(w.b1, {G, H}, "expert b1");
  check_shape(w.w2, {G, H, D}, "expert w2");
  check_shape(w.b2, {G, D}, "expert b2");
  check_shape(buf, {R, D}, "expert buffer");
  check_shape(pre, {R, H}, "expert pre-activation");
  SY_CHECK(static_cast<int64_t>(offset.size()) == G + 1 && offset[G] == R,
           "expert offsets: " << offset.size() << " entries, last " << offset.back() << ", buffer rows " << R);
  return {G, D, H, R};
}
}  // namespace

void expert_ffn_forward(Tensor& out, Tensor& pre, const Tensor& buf,
                        const std::vector<int32_t>& offset, const ExpertWeights& w) {
  const Dims d = check(buf, pre, offset, w);
  check_shape(out, buf.shape(), "expert out");
  std::vector<float> act;
  for (int64_t g = 0; g < d.G; ++g) {
    const int64_t r0 = offset[g], n = offset[g + 1] - r0;
    if (n == 0) continue;
    float* p = pre.f32() + r0 * d.H;
    gemm_rows(p, buf.f32() + r0 * d.D, w.w1.f32() + g * d.D * d.H, w.b1.f32() + g * d.H, n, d.D, d.H);
    act.resize(n * d.H);
    gelu_forward(act.data(), p, n * d.H);
    gemm_rows(out.f32() + r0 * d.D, act.data(), w.w2.f32() + g * d.H * d.D, w.b2.f32() + g * d.D, n,
              d.H, d.D);
  }
}

void expert_ffn_backward(Tensor& dbuf, const ExpertGrads& dw, const Tensor& dout, const Tensor& buf,
                         const Tensor& pre, const std::vector<int32_t>& offset,
                         const ExpertWeights& w) {
  const Dims d = check(buf, pre, offset, w);
  check_shape(dout, buf.shape(), "expert dout");
  check_shape(dbuf, buf.shape(), "expert dbuf");
  std::vector<float> act, dact, dpre;
  for (int64_t g = 0; g < d.G; ++g) {
    const int64_t r0 = offset[g], n = offset[g + 1] - r0;
    if (n == 0) continue;
    const float* p = pre.f32() + r0 * d.H;
    act.resize(n * d.H);
    gelu_forward(act.data(), p, n * d.H);
    dact.assign(n * d.H, 0.f);
    gemm_rows_backward(dact.data(), dw.w2.f32() + g * d.H * d.D, dw.b2.f32() + g * d.D,
                       dout.f32() + r0 * d.D, act.data(), w.w2.f32() + g * d.H * d.D, n, d.H, d.D);
    dpre.assign(n * d.H, 0.f);
    gelu_backward(dpre.data(), dact.data(), p, n * d.H);
    gemm_rows_backward(dbuf.f32() + r0 * d.D, dw.w1.f32() + g * d.D * d.H, dw.b1.f32() + g * d.H,
                       dpre.data(), buf.f32() + r0 * d.D, w.w1.f32() + g * d.D * d.H, n, d.D, d.H);
  }
}

}  // namespace sy::ops
