#include "ops/expert_ffn.h"

#include <algorithm>

#include "ops/backend.h"

namespace sy::ops {

ExpertLayout::ExpertLayout(int64_t d, std::vector<int64_t> h, FfnActivation a) : D(d), hidden(std::move(h)), act(a) {
  start_.assign(hidden.size() + 1, 0);
  for (size_t g = 0; g < hidden.size(); ++g) {
    SY_CHECK(hidden[g] > 0, "expert " << g << " has hidden width " << hidden[g]);
    start_[g + 1] = start_[g] + hidden[g];
  }
}

int64_t ExpertLayout::pre_offset(const std::vector<int32_t>& offset, int64_t g) const {
  int64_t p = 0;
  for (int64_t h = 0; h < g; ++h) p += static_cast<int64_t>(offset[h + 1] - offset[h]) * width(h);
  return p;
}

bool ExpertLayout::uniform() const {
  return std::all_of(hidden.begin(), hidden.end(), [&](int64_t h) { return h == hidden[0]; });
}

namespace {
void check(Ctx& ctx, const Tensor& buf, const Tensor& pre, const std::vector<int32_t>& offset, const ExpertLayout& l,
           const ExpertWeights& w) {
  const int64_t G = l.groups(), D = l.D, R = buf.dim(0);
  const bool swiglu = l.act == FfnActivation::swiglu;
  SY_CHECK(w.w1.numel() == l.w1_numel(), "expert w1" << (swiglu ? " (gate|up) " : " ") << shape_str(w.w1.shape())
                                                      << " for " << G << " experts of d_model " << D << " and hidden "
                                                      << l.total_hidden() << " in all");
  SY_CHECK(w.w2.numel() == l.w2_numel(), "expert w2 " << shape_str(w.w2.shape()) << " for " << G << " experts");
  SY_CHECK(w.b1.defined() == w.b2.defined(), "expert biases: b1 and b2 are both given or both absent");
  if (w.b1.defined()) {
    SY_CHECK(w.b1.numel() == l.total_width(), "expert b1 " << shape_str(w.b1.shape()) << " for "
                                                           << l.total_width() << " pre-activation columns in all");
    SY_CHECK(w.b2.numel() == G * D, "expert b2 " << shape_str(w.b2.shape()) << " for " << G << " experts of " << D);
  }
  check_shape(buf, {R, D}, "expert buffer");
  SY_CHECK(static_cast<int64_t>(offset.size()) == G + 1 && offset[0] == 0 && offset[G] == R,
           "expert offsets: " << offset.size() << " entries, last " << offset.back() << ", buffer rows " << R);
  SY_CHECK(pre.numel() == l.pre_numel(offset),
           "expert pre-activation " << shape_str(pre.shape()) << " for " << l.pre_numel(offset) << " values");
  SY_CHECK(pre.dtype() == DType::f32 || (pre.dtype() == DType::bf16 && w.w1_bf16 && l.act == FfnActivation::gelu),
           "expert pre-activation: " << dtype_name(pre.dtype()) << " (f32, or bf16 in bf16 mode with GELU)");
  check_device(ctx, "expert_ffn", {&buf, &pre, &w.w1, &w.b1, &w.w2, &w.b2});
  SY_CHECK(!w.w1_bf16 == !w.w2_bf16, "expert bf16 shadows: w1's and w2's are both given or both absent");
  if (w.w1_bf16) {
    check_dtype(*w.w1_bf16, DType::bf16, "expert w1's bf16 shadow");
    check_dtype(*w.w2_bf16, DType::bf16, "expert w2's bf16 shadow");
    check_shape(*w.w1_bf16, w.w1.shape(), "expert w1's bf16 shadow");
    check_shape(*w.w2_bf16, w.w2.shape(), "expert w2's bf16 shadow");
    check_device(ctx, "expert_ffn", {w.w1_bf16, w.w2_bf16});
  }
}
}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  check(ctx, a.buf, a.pre, a.offset, a.layout, a.w);
  SY_CHECK(a.buf.dtype() == DType::f32 || (a.w.w1_bf16 && a.buf.dtype() == DType::bf16),
           "expert_ffn_forward: buffer is " << dtype_name(a.buf.dtype()) << "; f32, or bf16 in bf16 mode");
  check_shape(a.out, a.buf.shape(), "expert out");
  check_dtype(a.out, DType::f32, "expert out");
  check_device(ctx, "expert_ffn_forward", {&a.out});
  SY_DISPATCH(ctx, expert_ffn_forward, ctx, a);
}

void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  check(ctx, a.buf, a.pre, a.offset, a.layout, a.w);
  check_shape(a.dout, a.buf.shape(), "expert dout");
  check_shape(a.dbuf, a.buf.shape(), "expert dbuf");
  check_dtype(a.dbuf, DType::f32, "expert dbuf");
  check_shape(a.dw.w1, a.w.w1.shape(), "expert dw1");
  check_shape(a.dw.w2, a.w.w2.shape(), "expert dw2");
  SY_CHECK(a.dw.b1.defined() == a.w.b1.defined() && a.dw.b2.defined() == a.w.b2.defined(),
           "expert bias gradients are given exactly when the biases are");
  if (a.w.b1.defined()) {
    check_shape(a.dw.b1, a.w.b1.shape(), "expert db1");
    check_shape(a.dw.b2, a.w.b2.shape(), "expert db2");
  }
  const bool bf16 = a.w.w1_bf16 != nullptr;
  SY_CHECK(a.buf.dtype() == DType::f32 || (bf16 && a.buf.dtype() == DType::bf16),
           "expert_ffn_backward: buffer is " << dtype_name(a.buf.dtype())
                                             << "; f32, or bf16 in bf16 mode (the forward's buf_bf16)");
  SY_CHECK(a.dout.dtype() == DType::f32 || (bf16 && a.dout.dtype() == DType::bf16),
           "expert_ffn_backward: dout is " << dtype_name(a.dout.dtype())
                                           << "; f32, or bf16 in bf16 mode (rounded by combine_backward)");
  if (a.act_bf16) {
    SY_CHECK(bf16, "expert_ffn_backward: act_bf16 without bf16 shadows");
    check_dtype(*a.act_bf16, DType::bf16, "expert act_bf16");
    SY_CHECK(a.act_bf16->numel() == a.layout.pre_numel(a.offset) / (a.layout.act == FfnActivation::swiglu ? 2 : 1),
             "expert act_bf16: " << a.act_bf16->numel() << " values for this layout");
  }
  check_device(ctx, "expert_ffn_backward", {&a.dbuf, &a.dout, &a.dw.w1, &a.dw.b1, &a.dw.w2, &a.dw.b2, a.act_bf16});
  SY_DISPATCH(ctx, expert_ffn_backward, ctx, a);
}

}  // namespace sy::ops
