// Expert FFNs on CUDA: a loop over the experts on the host offsets, one
// cuBLASLt GEMM per expert and direction (ops/cuda/gemm.h), each with its
// expert's own hidden width H_g and pre-activation width P_g (the packed
// layout of ops/expert_ffn.h: pre_g is expert g's (n_g, P_g) block of the
// packed pre; act_g its (n_g, H_g) block of act, packed the same way):
//
//   forward:   pre_g = buf_g W1_g [+ b1_g] (BIAS epilogue); act = gelu(pre) over
//              all rows at once, or act_g = swiglu(pre_g) per expert (ops/swiglu.h);
//              out_g = act_g W2_g [+ b2_g]
//   backward:  act as in forward; dact_g = dout_g W2_g^T; dW2_g += act_g^T dout_g;
//              [db2_g += column sums of dout_g]; dpre = gelu'(pre) dact (all rows)
//              or swiglu's backward per expert; dbuf_g += dpre_g W1_g^T;
//              dW1_g += buf_g^T dpre_g; [db1_g += column sums of dpre_g]
//              (grads_accumulate false, a step's first backward: dW1, dW2 written
//              by their GEMMs at beta 0, an expert without rows zeroed, db1, db2
//              zeroed first; dbuf_accumulate false: dbuf written at beta 0)
// The bracketed terms only with biases (model.bias true).
// GELU with a bf16 pre (bf16 mode): the up GEMMs write act and pre at once
// (the GELU_AUX[_BIAS] epilogue), and the dact GEMMs write dpre (DGELU):
// matmul's GELU epilogue (ops/matmul.h, ops/cuda/gemm.h), no activation
// pass forward or backward over the layer's widest tensors.
//
// bf16 mode (the weights' bf16 shadows given): the GEMM operands buf and
// dout are rounded once each, for all experts, into bf16 scratch (buf kept
// from the forward where the caller keeps it; either read as it is where it
// comes bf16, rounded by the dispatch or combine_backward); act and dpre are written in
// bf16 by the activation and its backward (ops/gelu.h, ops/swiglu.h), so
// neither has an fp32 copy. The weights come from the shadows; every GEMM
// has bf16 A and B, fp32 bias (a bf16 output's rounded to bf16 first:
// ops/matmul.h), CUBLAS_COMPUTE_32F, and an fp32 C except
// where pre is bf16 (GELU in bf16 mode, ops/expert_ffn.h): then the first
// GEMM writes act and pre in bf16, and backward's first writes dpre, by
// the GELU epilogues (cuBLASLt's bf16 D and aux, or fp32 scratch and the
// GELU kernels: gemm_gelu_into, gemm_dgelu_into). dbuf and the gradients
// are fp32; db1 sums dpre's bf16 values, db2 dout's values (bf16 ones
// widened).
//
// Why not cublasGemmGroupedBatchedEx: with CUBLAS_COMPUTE_32F it needs one
// type for A, B and C (GPU_PLAN.md), so bf16 inputs would mean bf16 outputs,
// and out, dbuf and the fp32 weight gradients (beta 1 adds to them, beta 0
// writes them) must stay fp32; cuBLASLt 13 has no grouped matmul. So one cuBLASLt call per
// expert in both modes (the offsets are on the host already: no sync),
// whose plans are kept per bucket of the row count (ops/cuda/gemm.h), as
// the counts change every step.
// Equal experts on equal rows (one width, every n_g = n: a padded route,
// ops/routing.h, or expert choice) are one strided-batched cuBLASLt call per
// direction instead: expert g's blocks of buf, pre, act, out and of every
// weight sit at g times a fixed stride, so the G GEMMs differ only by those
// offsets (ops/cuda/gemm.h). The same products, one launch instead of G.
// With one width the packed pre and act are plain (R, P) and (R, H)
// matrices, so the activation (SwiGLU's too) is one call over all rows.
// Deterministic: fixed cuBLASLt algorithms per shape (per row bucket: the
// bucket's), column sums in fixed order, no atomics.
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/expert_ffn.h"
#include "ops/gelu.h"
#include "ops/swiglu.h"

#include <algorithm>

namespace sy::ops::cuda {

namespace {

// Element i of t (fp32 or bf16) as a GEMM operand pointer.
const void* at(const Tensor& t, int64_t i) { return static_cast<const char*>(t.raw()) + i * dtype_size(t.dtype()); }

// A strided batch of the GEMMs below (ops/cuda/gemm.h): `count` experts,
// expert g's operands g times these strides (elements) past the pointers.
struct Batch {
  int64_t count = 1, a = 0, b = 0, c = 0, bias = 0;
};
void set_batch(GemmArgs& g, const Batch& b) {
  g.batch = b.count;
  g.stride_a = b.a, g.stride_b = b.b, g.stride_c = b.c, g.stride_bias = b.bias;
}

// C (rows, n) [+]= A (rows, k) B (k, n) [+ bias], all row-major and contiguous;
// C f32, or bf16 (beta 0: written rounded, gemm_into).
GemmArgs nn_args(bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, float beta,
                 const float* bias, const Batch& batch) {
  GemmArgs g;
  set_batch(g, batch);
  g.bucket_m = batch.count == 1;  // (one expert's rows: a count that changes every step)
  g.bf16 = bf16;
  g.M = rows, g.N = n, g.K = k;
  g.A = A, g.lda = k;
  g.B = B, g.ldb = n;
  g.beta = beta;
  g.ldc = n;
  g.bias = bias;
  return g;
}
void gemm_nn(Ctx& ctx, bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, Tensor C,
             float beta, const float* bias, const Batch& batch = {}) {
  gemm_into(ctx, nn_args(bf16, rows, n, k, A, B, beta, bias, batch), C);
}
// The same GEMM (beta 0) with the GELU epilogue (ops/matmul.h): pre = its
// value, act = gelu of it (gemm_gelu_into), act and pre packed alike.
void gemm_nn_gelu(Ctx& ctx, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, Tensor act,
                  Tensor pre, const float* bias, const Batch& batch = {}) {
  gemm_gelu_into(ctx, nn_args(true, rows, n, k, A, B, 0.f, bias, batch), act, pre);
}

// C (rows, n) [+]= A (rows, k) B^T, B stored (n, k); C f32, or bf16 (beta 0).
GemmArgs nt_args(bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, float beta,
                 const Batch& batch) {
  GemmArgs g;
  set_batch(g, batch);
  g.bucket_m = batch.count == 1;
  g.bf16 = bf16;
  g.trans_b = true;
  g.M = rows, g.N = n, g.K = k;
  g.A = A, g.lda = k;
  g.B = B, g.ldb = k;
  g.beta = beta;
  g.ldc = n;
  return g;
}
void gemm_nt(Ctx& ctx, bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, Tensor C,
             float beta, const Batch& batch = {}) {
  gemm_into(ctx, nt_args(bf16, rows, n, k, A, B, beta, batch), C);
}
// The same GEMM (beta 0) with the GELU epilogue's backward: dpre = its value
// times gelu'(pre) (gemm_dgelu_into), dpre and pre packed alike.
void gemm_nt_dgelu(Ctx& ctx, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, Tensor dpre,
                   const Tensor& pre, const Batch& batch = {}) {
  gemm_dgelu_into(ctx, nt_args(true, rows, n, k, A, B, 0.f, batch), dpre, pre);
}

// C (k, n) [+]= A^T B, A stored (rows, k), B (rows, n).
void gemm_tn(Ctx& ctx, bool bf16, int64_t rows, int64_t n, int64_t k, const void* A, const void* B, float* C,
             float beta, const Batch& batch = {}) {
  GemmArgs g;
  set_batch(g, batch);
  g.bucket_k = batch.count == 1;  // (the sum over one expert's rows)
  g.bf16 = bf16;
  g.trans_a = true;
  g.M = k, g.N = n, g.K = rows;
  g.A = A, g.lda = k;
  g.B = B, g.ldb = n;
  g.beta = beta;
  g.C = C, g.ldc = n;
  gemm(ctx, g);
}

// Column (g, c) of G experts' (n, W) blocks stacked in x, as one (n, G W)
// matrix: every expert's bias gradient (G, W) in one column-sum launch, in
// the order of the per-expert sums. T: float, or bf16 (its values widened).
template <class T>
struct ExpertColumns {
  static constexpr int kOut = 1;
  const T* x;
  int64_t n, W;
  __device__ void operator()(int64_t r, int64_t c, float* v) const { v[0] = to_float(x[((c / W) * n + r) * W + c % W]); }
  // (8 columns of one expert: W % 8 == 0)
  __device__ void load8(int64_t r, int64_t c0, float* v) const { load8_at(x + ((c0 / W) * n + r) * W + c0 % W, v); }
  bool vec_ok() const { return W % 8 == 0 && aligned16(x); }
};

// The same over experts of one width W on unequal rows (a packed route):
// expert g's block is rows [offset[g], offset[g+1]) of the packed (R, W) x;
// the matrix has as many rows as the largest block, zeros below a shorter
// one. Each sum is its rows' in order, staged as column_sums stages the
// longest block (one stage or two for all): deterministic, but not the
// per-expert launches' bits where those would have taken one stage.
template <class T>
struct PackedExpertColumns {
  static constexpr int kOut = 1;
  const T* x;
  const int32_t* offset;  // device, G + 1
  int64_t W;
  __device__ void operator()(int64_t r, int64_t c, float* v) const {
    const int64_t g = c / W, r0 = offset[g];
    v[0] = r < offset[g + 1] - r0 ? to_float(x[(r0 + r) * W + c % W]) : 0.f;
  }
  __device__ void load8(int64_t r, int64_t c0, float* v) const {
    const int64_t g = c0 / W, r0 = offset[g];
    if (r < offset[g + 1] - r0) return load8_at(x + (r0 + r) * W + c0 % W, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = 0.f;
  }
  bool vec_ok() const { return W % 8 == 0 && aligned16(x); }
};

// out[S_g .. S_g + W_g) += the column sums of expert g's (n_g, W_g) block
// of the packed x (blocks and outputs each at the sum of the earlier ones:
// dout's rows with W_g = D for db2, dpre with W_g = P_g for db1), each in a
// fixed order. Experts of one width: one launch (equal rows, eq >= 0; else
// over the device copy of the offsets, offset_dev), not one per expert.
template <class T, class Width>
void expert_column_sums(Ctx& ctx, const T* x, const std::vector<int32_t>& offset, int64_t eq, bool uniform,
                        const Tensor& offset_dev, Width width, float* out) {
  const int64_t G = static_cast<int64_t>(offset.size()) - 1;
  if (eq >= 0) return column_sums(ctx, ExpertColumns<T>{x, eq, width(0)}, eq, G * width(0), ColumnOut{{out}});
  if (uniform) {
    int64_t longest = 0;
    for (int64_t g = 0; g < G; ++g) longest = std::max<int64_t>(longest, offset[g + 1] - offset[g]);
    return column_sums(ctx, PackedExpertColumns<T>{x, offset_dev.data<int32_t>(), width(0)}, longest, G * width(0),
                       ColumnOut{{out}});
  }
  int64_t x0 = 0, o0 = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n = offset[g + 1] - offset[g], W = width(g);
    if (n > 0) column_sums_into(ctx, x + x0, n, W, out + o0);
    x0 += n * W, o0 += W;
  }
}

// The operand the GEMMs read: t itself (fp32 mode) or bf16(t) in scratch.
Tensor operand(Ctx& ctx, bool bf16, const Tensor& t) {
  return bf16 && t.dtype() != DType::bf16 ? bf16_copy(ctx, t) : t;
}


// Elements [offset, offset + rows * cols) of a packed tensor as (rows, cols).
Tensor block(const Tensor& t, int64_t offset, int64_t rows, int64_t cols) {
  return t.reshape({t.numel()}).rows(offset, offset + rows * cols).reshape({rows, cols});
}

// Where expert g's block starts in a tensor packed as ops/expert_ffn.h lays
// it out, n_g rows of width(g) values each (pre: l.width(g); act:
// l.hidden[g]); entry G is the total.
template <class Width>
std::vector<int64_t> block_starts(const ExpertLayout& l, const std::vector<int32_t>& offset, Width width) {
  std::vector<int64_t> s(l.groups() + 1, 0);
  for (int64_t g = 0; g < l.groups(); ++g) s[g + 1] = s[g] + static_cast<int64_t>(offset[g + 1] - offset[g]) * width(g);
  return s;
}
std::vector<int64_t> act_starts(const ExpertLayout& l, const std::vector<int32_t>& offset) {
  return block_starts(l, offset, [&l](int64_t g) { return l.hidden[g]; });
}
std::vector<int64_t> pre_starts(const ExpertLayout& l, const std::vector<int32_t>& offset) {
  return block_starts(l, offset, [&l](int64_t g) { return l.width(g); });
}

// The packed act of ops/expert_ffn.h's layout: sum_g n_g H_g values.
int64_t act_numel(const ExpertLayout& l, const std::vector<int32_t>& offset) { return act_starts(l, offset).back(); }

// Whether the up GEMMs take the GELU epilogue (ops/matmul.h): GELU with a
// bf16 pre in bf16 mode (ops/expert_ffn.h). fp32 keeps the separate ops,
// which define the epilogue there.
bool gelu_epilogue(const ExpertLayout& l, bool bf16, const Tensor& pre) {
  return bf16 && l.act == FfnActivation::gelu && pre.dtype() == DType::bf16;
}

// Rows every expert holds when the experts are one width and hold equal
// rows (the strided-batched path), else -1.
int64_t equal_rows(const ExpertLayout& l, const std::vector<int32_t>& offset) {
  const int64_t G = l.groups();
  if (G < 2 || !l.uniform()) return -1;
  const int64_t n = offset[1] - offset[0];
  for (int64_t g = 0; g <= G; ++g)
    if (offset[g] != offset[0] + g * n) return -1;
  return n > 0 ? n : -1;
}

// act = the activation of pre, expert by expert (packed); a bf16 act holds
// the fp32 values rounded (bf16 mode: the GEMM operand, written directly).
Tensor activation(Ctx& ctx, const ExpertLayout& l, const std::vector<int32_t>& offset, const Tensor& pre,
                  DType dtype) {
  Tensor act = Tensor::empty({act_numel(l, offset)}, dtype, ctx);
  if (l.act == FfnActivation::gelu) {
    cuda::gelu_forward(ctx, act, pre.reshape({pre.numel()}));
    return act;
  }
  if (l.uniform() && act.numel() > 0) {  // pre (R, 2H), act (R, H)
    const int64_t H = l.hidden[0], R = act.numel() / H;
    Tensor y = block(act, 0, R, H);
    cuda::swiglu_forward(ctx, {y, block(pre, 0, R, 2 * H)});
    return act;
  }
  const std::vector<int64_t> pre_at = pre_starts(l, offset), act_at = act_starts(l, offset);
  for (int64_t g = 0; g < l.groups(); ++g) {
    const int64_t n = offset[g + 1] - offset[g], H = l.hidden[g];
    if (n > 0) {
      Tensor y = block(act, act_at[g], n, H);
      cuda::swiglu_forward(ctx, {y, block(pre, pre_at[g], n, 2 * H)});
    }
  }
  return act;
}

// dpre (packed as pre): f32 zeroed, += the activation's backward of dact at
// pre; bf16, that gradient written rounded (ops/gelu.h, ops/swiglu.h).
void activation_backward(Ctx& ctx, const ExpertLayout& l, const std::vector<int32_t>& offset, Tensor& dpre,
                         const Tensor& dact, const Tensor& pre) {
  if (l.act == FfnActivation::gelu) {
    Tensor d = dpre.reshape({dpre.numel()});
    cuda::gelu_backward(ctx, d, dact, pre.reshape({pre.numel()}));
    return;
  }
  if (l.uniform() && dact.numel() > 0) {
    const int64_t H = l.hidden[0], R = dact.numel() / H;
    Tensor dx = block(dpre, 0, R, 2 * H);
    cuda::swiglu_backward(ctx, {dx, block(dact, 0, R, H), block(pre, 0, R, 2 * H)});
    return;
  }
  const std::vector<int64_t> pre_at = pre_starts(l, offset), act_at = act_starts(l, offset);
  for (int64_t g = 0; g < l.groups(); ++g) {
    const int64_t n = offset[g + 1] - offset[g], H = l.hidden[g];
    if (n > 0) {
      Tensor dx = block(dpre, pre_at[g], n, 2 * H);
      cuda::swiglu_backward(ctx, {dx, block(dact, act_at[g], n, H), block(pre, pre_at[g], n, 2 * H)});
    }
  }
}

}  // namespace

void expert_ffn_forward(Ctx& ctx, const ExpertFfnArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D, R = a.buf.dim(0);
  if (R == 0) return;
  const bool bf16 = a.w.w1_bf16 != nullptr;
  const bool bias = a.w.b1.defined();
  // Each stage in its own profile interval, a part of this op's (core/op_profile.h):
  // what of the op's time is not its GEMMs.
  Tensor buf;
  {
    const OpScope part(ctx.profiler, "round operands");
    buf = operand(ctx, bf16, a.buf);
  }
  if (bf16 && a.buf_bf16) *a.buf_bf16 = buf;
  const Tensor& w1 = bf16 ? *a.w.w1_bf16 : a.w.w1;
  const Tensor& w2 = bf16 ? *a.w.w2_bf16 : a.w.w2;
  const float *b1 = bias ? a.w.b1.data<float>() : nullptr, *b2 = bias ? a.w.b2.data<float>() : nullptr;
  // pre: f32, or bf16 (GELU in bf16 mode: the GEMM writes it rounded)
  const int64_t eq = equal_rows(l, a.offset);  // the strided-batched path when >= 0
  const int64_t P0 = l.width(0), H0 = l.hidden[0];
  // GELU with a bf16 pre: the up GEMMs' GELU epilogue writes act as well
  // (ops/expert_ffn.h; packed as pre, one width per expert), no activation pass.
  const bool fused = gelu_epilogue(l, bf16, a.pre);
  Tensor act = fused ? Tensor::empty({act_numel(l, a.offset)}, DType::bf16, ctx) : Tensor();
  {
    const OpScope part(ctx.profiler, "up GEMMs");
    const Batch batch{G, eq * D, D * P0, eq * P0, P0};
    if (eq >= 0 && fused)  // offset[0] = 0 (ops/expert_ffn.cc checks it)
      gemm_nn_gelu(ctx, eq, P0, D, at(buf, 0), at(w1, 0), act, a.pre, bias ? b1 : nullptr, batch);
    else if (eq >= 0)
      gemm_nn(ctx, bf16, eq, P0, D, at(buf, 0), at(w1, 0), a.pre, 0.f, bias ? b1 : nullptr, batch);
    const std::vector<int64_t> pre_at = eq < 0 ? pre_starts(l, a.offset) : std::vector<int64_t>{};
    for (int64_t g = 0; g < G && eq < 0; ++g) {  // expert g's block of the packed pre (ops/expert_ffn.h)
      const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, P = l.width(g);
      if (n == 0) continue;
      const float* b = bias ? b1 + l.b1_offset(g) : nullptr;
      if (fused)
        gemm_nn_gelu(ctx, n, P, D, at(buf, r0 * D), at(w1, l.w1_offset(g)), block(act, pre_at[g], n, P),
                     block(a.pre, pre_at[g], n, P), b);
      else
        gemm_nn(ctx, bf16, n, P, D, at(buf, r0 * D), at(w1, l.w1_offset(g)), block(a.pre, pre_at[g], n, P), 0.f, b);
    }
  }
  if (!fused) {
    const OpScope part(ctx.profiler, "activation");
    act = activation(ctx, l, a.offset, a.pre, bf16 ? DType::bf16 : DType::f32);
  }
  if (bf16 && a.act_bf16) *a.act_bf16 = act;
  const OpScope part(ctx.profiler, "down GEMMs");
  if (eq >= 0)
    gemm_nn(ctx, bf16, eq, D, H0, at(act, 0), at(w2, 0), a.out, 0.f, bias ? b2 : nullptr,
            {G, eq * H0, H0 * D, eq * D, D});
  const std::vector<int64_t> act_at = eq < 0 ? act_starts(l, a.offset) : std::vector<int64_t>{};
  for (int64_t g = 0; g < G && eq < 0; ++g) {  // expert g's block of the packed act
    const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, H = l.hidden[g];
    if (n > 0)
      gemm_nn(ctx, bf16, n, D, H, at(act, act_at[g]), at(w2, l.w2_offset(g)), a.out.rows(r0, r0 + n), 0.f,
              bias ? b2 + l.b2_offset(g) : nullptr);
  }
}

void expert_ffn_backward(Ctx& ctx, const ExpertFfnBackwardArgs& a) {
  const ExpertLayout& l = a.layout;
  const int64_t G = l.groups(), D = l.D, R = a.buf.dim(0);
  const bool bf16 = a.w.w1_bf16 != nullptr;
  const bool bias = a.w.b1.defined();
  const int64_t eq = equal_rows(l, a.offset);  // the strided-batched path when >= 0
  // Written gradients (the step's first backward): the weight GEMMs write
  // with beta 0; zeros where none writes (no rows at all, an expert without
  // rows) and under the bias sums, which add (G (P + D) values: small).
  const float dw_beta = a.grads_accumulate ? 1.f : 0.f;
  if (!a.grads_accumulate) {
    if (bias) a.dw.b1.zero(ctx), a.dw.b2.zero(ctx);
    for (int64_t g = 0; g < G; ++g)
      if (R == 0 || (eq < 0 && a.offset[g + 1] == a.offset[g])) {
        block(a.dw.w1, l.w1_offset(g), D, l.width(g)).zero(ctx);
        block(a.dw.w2, l.w2_offset(g), l.hidden[g], D).zero(ctx);
      }
  }
  if (R == 0) return;
  // buf and act as the forward rounded them where it kept them (a bf16 buf,
  // act_bf16), else rounded (act recomputed from pre) here
  // Each stage in its own profile interval, as in the forward.
  Tensor buf_op, dout_op;
  {
    const OpScope part(ctx.profiler, "round operands");
    buf_op = operand(ctx, bf16, a.buf), dout_op = operand(ctx, bf16, a.dout);
  }
  const Tensor& w1 = bf16 ? *a.w.w1_bf16 : a.w.w1;
  const Tensor& w2 = bf16 ? *a.w.w2_bf16 : a.w.w2;
  float *dw1 = a.dw.w1.data<float>(), *dw2 = a.dw.w2.data<float>();
  float *db1 = bias ? a.dw.b1.data<float>() : nullptr, *db2 = bias ? a.dw.b2.data<float>() : nullptr;
  Tensor act_op;
  if (a.act_bf16) {
    act_op = *a.act_bf16;
  } else {
    const OpScope part(ctx.profiler, "activation again");
    act_op = activation(ctx, l, a.offset, a.pre, bf16 ? DType::bf16 : DType::f32);
  }
  // Expert g's blocks of the packed act and dact, of pre and dpre.
  const std::vector<int64_t> act_at = act_starts(l, a.offset), pre_at = pre_starts(l, a.offset);
  const int64_t P0 = l.width(0), H0 = l.hidden[0];
  // GELU with a bf16 pre (as the forward): the dact GEMMs' DGELU epilogue
  // writes dpre itself (bf16, the gradient the GEMMs below read), no dact.
  const bool fused = gelu_epilogue(l, bf16, a.pre);
  // dact (unfused) as pre: bf16 where pre is (the GEMM writes it rounded), else f32
  Tensor dact = fused ? Tensor() : Tensor::empty({act_at.back()}, a.pre.dtype(), ctx);
  Tensor dpre = fused ? Tensor::empty(a.pre.shape(), DType::bf16, ctx) : Tensor();
  // The input gradients' GEMMs (bf16 or fp32 out) apart from the fp32
  // weight gradients' (experts' own blocks: independent, any order).
  {
    const OpScope part(ctx.profiler, "dact GEMMs");
    const Batch batch{G, eq * D, H0 * D, eq * H0, 0};
    if (eq >= 0 && fused)  // offset[0] = 0
      gemm_nt_dgelu(ctx, eq, H0, D, at(dout_op, 0), at(w2, 0), dpre.reshape({dpre.numel()}),
                    a.pre.reshape({a.pre.numel()}), batch);
    else if (eq >= 0)
      gemm_nt(ctx, bf16, eq, H0, D, at(dout_op, 0), at(w2, 0), dact, 0.f, batch);
    for (int64_t g = 0; g < G && eq < 0; ++g) {
      const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, H = l.hidden[g];
      if (n == 0) continue;
      if (fused)  // (GELU: pre's blocks, P = H wide)
        gemm_nt_dgelu(ctx, n, H, D, at(dout_op, r0 * D), at(w2, l.w2_offset(g)), block(dpre, pre_at[g], n, H),
                      block(a.pre, pre_at[g], n, H));
      else
        gemm_nt(ctx, bf16, n, H, D, at(dout_op, r0 * D), at(w2, l.w2_offset(g)), block(dact, act_at[g], n, H), 0.f);
    }
  }
  {
    const OpScope part(ctx.profiler, "dW2 GEMMs");
    if (eq >= 0)
      gemm_tn(ctx, bf16, eq, D, H0, at(act_op, 0), at(dout_op, 0), dw2, dw_beta, {G, eq * H0, eq * D, H0 * D, 0});
    for (int64_t g = 0; g < G && eq < 0; ++g) {
      const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, H = l.hidden[g];
      if (n > 0)
        gemm_tn(ctx, bf16, n, D, H, at(act_op, act_at[g]), at(dout_op, r0 * D), dw2 + l.w2_offset(g), dw_beta);
    }
  }
  // bf16 mode: the activation's backward writes dpre rounded, the operand
  // the GEMMs read and whose values db1 sums (no zero fill, no f32 copy).
  if (!fused) {
    const OpScope part(ctx.profiler, "activation backward");
    dpre = bf16 ? Tensor::empty(a.pre.shape(), DType::bf16, ctx) : Tensor::zeros(a.pre.shape(), DType::f32, ctx);
    activation_backward(ctx, l, a.offset, dpre, dact, a.pre);
  }
  const float dbuf_beta = a.dbuf_accumulate ? 1.f : 0.f;  // (written: each row is one expert's)
  {
    const OpScope part(ctx.profiler, "dbuf GEMMs");
    if (eq >= 0)
      gemm_nt(ctx, bf16, eq, D, P0, at(dpre, 0), at(w1, 0), a.dbuf, dbuf_beta, {G, eq * P0, D * P0, eq * D, 0});
    for (int64_t g = 0; g < G && eq < 0; ++g) {
      const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, P = l.width(g);
      if (n > 0)
        gemm_nt(ctx, bf16, n, D, P, at(dpre, pre_at[g]), at(w1, l.w1_offset(g)), a.dbuf.rows(r0, r0 + n), dbuf_beta);
    }
  }
  {
    const OpScope part(ctx.profiler, "dW1 GEMMs");
    if (eq >= 0)
      gemm_tn(ctx, bf16, eq, P0, D, at(buf_op, 0), at(dpre, 0), dw1, dw_beta, {G, eq * D, eq * P0, D * P0, 0});
    for (int64_t g = 0; g < G && eq < 0; ++g) {
      const int64_t r0 = a.offset[g], n = a.offset[g + 1] - r0, P = l.width(g);
      if (n > 0) gemm_tn(ctx, bf16, n, P, D, at(buf_op, r0 * D), at(dpre, pre_at[g]), dw1 + l.w1_offset(g), dw_beta);
    }
  }
  if (!bias) return;
  const OpScope part(ctx.profiler, "bias sums");  // db2 from dout's values, db1 from dpre's (bf16 ones widened)
  // (db2's experts are all D wide: one launch whatever the widths)
  const Tensor offset_dev = eq < 0 ? upload(ctx, a.offset) : Tensor();
  auto model_width = [D](int64_t) { return D; };
  if (a.dout.dtype() == DType::bf16)
    expert_column_sums(ctx, elems<Bf16>(a.dout), a.offset, eq, true, offset_dev, model_width, db2);
  else
    expert_column_sums(ctx, a.dout.data<float>(), a.offset, eq, true, offset_dev, model_width, db2);
  auto width = [&l](int64_t g) { return l.width(g); };
  if (bf16)
    expert_column_sums(ctx, elems<Bf16>(dpre), a.offset, eq, l.uniform(), offset_dev, width, db1);
  else
    expert_column_sums(ctx, dpre.data<float>(), a.offset, eq, l.uniform(), offset_dev, width, db1);
}

}  // namespace sy::ops::cuda
