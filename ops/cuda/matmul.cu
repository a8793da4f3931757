// matmul on CUDA: cuBLASLt sgemm in fp32 mode (CUBLAS_COMPUTE_32F: full fp32
// products, no TF32), row-major through the usual transposition: a row-major
// C (M, N) is a column-major C^T (N, M) = op(B)^T op(A)^T, so cuBLASLt gets B
// as its first operand and A as its second.
//
//   forward:   y = x W [+ b] [+ y]     one GEMM, bias in the BIAS epilogue, beta = 1 to accumulate
//   backward:  dx += dy W^T (beta = 1; 0 writes it), dW += x^T dy (beta = 1), db += column sums of dy
//   GELU epilogue (ops/matmul.h): bf16, cuBLASLt's GELU_AUX[_BIAS] (y into
//              the aux matrix, gelu(y) into D) and DGELU (dx = D scaled by
//              gelu' of the aux matrix, gelu_pre); fp32, the GEMM and then
//              the GELU kernels, which are its definition there
//   w_transposed (W stored (M, K), a tied LM head): y = x W^T through cuBLASLt's
//              transpose of W; dx += dy W, dW += dy^T x
//
// bf16 mode (w_bf16 given): W is read from its bf16 shadow, x and dy are
// rounded into bf16 scratch from ctx's allocator (ops::cuda::to_bf16, one
// pass each; an x that comes as bf16 is read as it is), the GEMMs take bf16
// A and B with fp32 C/D, bias and CUBLAS_COMPUTE_32F (but a bf16 y or dx:
// below); db sums the fp32 dy.
// A bf16 y or dx (written, not accumulated) is cuBLASLt's bf16 D: the fp32
// accumulator plus the bias rounded to bf16 (ops/matmul.h's contract, and
// the bias type cuBLASLt takes for a bf16 D: round_bias writes the copy,
// each batch's block 16-byte aligned), rounded once; its algorithm may sum
// in another order than the fp32 output's, so within one bf16 step of that
// output rounded. (cuBLAS 13.0 on an H200 refused an fp32 bias with a bf16
// D at every shape, and the fp32 scratch and rounding pass that cost took
// the expert FFN's up GEMMs from about 0.5 to 1.3 ms at T 16384, d 1024,
// h 4096: docs/experiments/bf16-bias-copy.md.) Where cuBLASLt has no
// algorithm (said once per shape, or row bucket, on stderr), the GEMM
// writes fp32 scratch with the same rounded bias and to_bf16 rounds it:
// exactly that output rounded.
//
// Determinism: cuBLAS(Lt) gives bitwise-identical results run to run on one
// GPU model for a fixed algorithm and workspace; the algorithm is kept per
// (shape, alignments, mode, epilogue) with its descriptor and layouts (a
// Plan), so it does not change within a run. For an expert's varying rows
// the shape is the bucket's (bucket() below), which depends on the row
// count alone, so a count gets the same algorithm whatever came before.
// Where the heuristic has nothing with the BIAS epilogue, the bias goes in
// by add_bias_rows and the GEMM runs without it (remembered per key too). db is a
// fixed-order two-stage column sum (common.cuh), no atomics.
#include <cublasLt.h>

#include "core/size_class.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/elementwise.h"
#include "ops/gelu.h"
#include "ops/matmul.h"

namespace sy::ops::cuda {

namespace {

// Largest power of two (<= 256 bytes) dividing the address: what cuBLASLt's
// heuristic needs to know about views that start inside a buffer.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 2 && a % al != 0) al /= 2;  // 2: a bf16 view may start at any element
  return al;
}

// The same for every matrix of a strided batch: p, p + stride_bytes, ...
uint32_t alignment(const void* p, int64_t batch, int64_t stride_bytes) {
  if (batch <= 1) return alignment(p);
  return alignment(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) | static_cast<uintptr_t>(stride_bytes)));
}

struct AlgoKey {
  int device;
  bool ta, tb, bf16, bias, beta, out16;
  int64_t M, N, K, lda, ldb, ldc;
  uint32_t align_a, align_b, align_c;
  int64_t batch, stride_a, stride_b, stride_c, stride_bias;
  bool bucketed;  // M and K are a bucket's (the plan's layouts set per call); never shared with an exact plan
  // The bias's too: the heuristic reads the bias pointer's value for its
  // alignment (cublasLt.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER), and experts'
  // biases at different offsets differ in it.
  uint32_t align_bias;
  Epilogue epilogue;
  uint32_t align_aux;  // (the same for the GELU epilogues' aux matrix)
  size_t workspace;    // the heuristic's limit: an algorithm chosen under a larger one is refused under a smaller
  auto tie() const {
    return std::tie(device, ta, tb, bf16, bias, beta, out16, M, N, K, lda, ldb, ldc, align_a, align_b, align_c, batch,
                    stride_a, stride_b, stride_c, stride_bias, bucketed, align_bias, epilogue, align_aux, workspace);
  }
  bool operator<(const AlgoKey& o) const { return tie() < o.tie(); }
};

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
  void operator()(cublasLtMatrixLayoutOpaque_t* d) const { cublasLtMatrixLayoutDestroy(d); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* d) const { cublasLtMatmulPreferenceDestroy(d); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DescDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, DescDeleter>;

// A column-major matrix of rows x cols with leading dimension ld, fp32 or
// bf16; `batch` of them `stride` elements apart when batch > 1.
Layout layout(int64_t rows, int64_t cols, int64_t ld, bool bf16 = false, int64_t batch = 1, int64_t stride = 0) {
  cublasLtMatrixLayout_t l = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, bf16 ? CUDA_R_16BF : CUDA_R_32F, static_cast<uint64_t>(rows),
                                          static_cast<uint64_t>(cols), ld));
  Layout owned(l);
  if (batch > 1) {
    const int32_t count = static_cast<int32_t>(batch);
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return owned;
}

// out = bias rounded to bf16 (round to nearest even, as to_bf16), as T:
// bf16, or fp32 holding those values. Each of `batch` biases of N values,
// in_stride elements apart in bias and out_stride in out. (A bf16 output's
// bias, ops/matmul.h; to_bf16 takes tensors, the bias is a pointer into one,
// possibly a strided batch's.)
template <class T>
static __global__ void round_bias(T* out, const float* bias, int64_t N, int64_t in_stride, int64_t out_stride) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= N) return;
  const __nv_bfloat16 r = __float2bfloat16_rn(bias[blockIdx.y * in_stride + c]);
  if constexpr (std::is_same_v<T, float>)
    out[blockIdx.y * out_stride + c] = __bfloat162float(r);
  else
    out[blockIdx.y * out_stride + c] = r;
}

// The bias of a bf16 output (g.C16, g.bias): rounded to bf16 in scratch, as
// T, each of g.batch blocks at a stride of N rounded up to 8 elements (16
// bytes of bf16, the epilogue's alignment). Returns the stride.
template <class T>
int64_t rounded_bias(Ctx& ctx, const GemmArgs& g, Tensor& out) {
  const int64_t stride = (g.N + 7) / 8 * 8;
  out = Tensor::empty({g.batch * stride}, std::is_same_v<T, float> ? DType::f32 : DType::bf16, ctx);
  const dim3 grid(static_cast<unsigned>(grid_for(g.N)), static_cast<unsigned>(g.batch));
  round_bias<T><<<grid, kBlock, 0, stream(ctx)>>>(static_cast<T*>(out.raw()), g.bias, g.N, g.stride_bias, stride);
  CUDA_CHECK(cudaGetLastError());
  return stride;
}

// C (M, N) = bias broadcast over rows [+ C], for each of `batch` (C, bias)
// pairs: the bias when it cannot go in the epilogue (a view whose address
// cuBLASLt's bias loads may not accept).
static __global__ void add_bias_rows(float* C, int64_t ldc, const float* bias, int64_t M, int64_t N, bool keep,
                                     int64_t stride_c, int64_t stride_bias) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= M * N) return;
  const int64_t r = i / N, c = i % N;
  float* Cb = C + blockIdx.y * stride_c;
  Cb[r * ldc + c] = (keep ? Cb[r * ldc + c] : 0.f) + bias[blockIdx.y * stride_bias + c];
}


// Everything one GEMM configuration needs, made on its first call and kept:
// the descriptor, the three layouts and the heuristic's first algorithm
// (none: the heuristic found none; remembered too). A step makes the same
// GEMMs every time (a packed route's experts: up to 6 a layer per expert),
// so each call sets the pointers and launches: no descriptor or layout
// created and destroyed per call. The bias and aux pointers are the
// attributes a call changes (their alignments are in the key); calls hold
// plan_mutex from the lookup to the launch, so no other thread sees a
// descriptor half set.
struct Plan {
  MatmulDesc desc;
  Layout first, second, out;
  std::optional<cublasLtMatmulAlgo_t> algo;
};
std::mutex plan_mutex;
std::map<AlgoKey, Plan> plans;
int64_t bucket_fallbacks = 0;  // calls a bucket's plan could not serve (under plan_mutex)
int64_t out16_fallbacks = 0;   // bf16-output calls no plan served: fp32 scratch instead (under plan_mutex)

// gemm()'s `return false` before any plan is looked up (counted as the rest).
bool out16_refused() {
  std::lock_guard<std::mutex> lock(plan_mutex);
  ++out16_fallbacks;
  return false;
}

// key's plan, made where there is none. Column-major view: D (N, M) =
// op'(B) (N, K) * op'(A) (K, M); the layouts, the descriptor and the
// heuristic's query depend on nothing but the key (and the bias and aux
// pointers' alignments, which are in it). A row bucket's layouts are then
// set to each call's own M and K (set_dims below).
Plan& plan_for(Ctx& ctx, cublasLtHandle_t handle, const GemmArgs& g, const AlgoKey& key, const void* bias,
               const void* aux) {
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  Plan p;
  const int64_t nb = key.batch;
  p.first = g.trans_b ? layout(g.K, g.N, g.ldb, g.bf16, nb, g.stride_b) : layout(g.N, g.K, g.ldb, g.bf16, nb, g.stride_b);
  p.second = g.trans_a ? layout(g.M, g.K, g.lda, g.bf16, nb, g.stride_a) : layout(g.K, g.M, g.lda, g.bf16, nb, g.stride_a);
  p.out = layout(g.N, g.M, g.ldc, key.out16, nb, g.stride_c);
  const cublasOperation_t op_first = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasLtMatmulDesc_t d = nullptr;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  p.desc.reset(d);
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  // The epilogue: BIAS, GELU_AUX[_BIAS] (act into D, the pre-activation
  // into aux) or DGELU (D scaled by gelu' of aux); aux laid out as D.
  const bool gelu = key.epilogue == Epilogue::gelu, dgelu = key.epilogue == Epilogue::dgelu;
  if (gelu || dgelu) {
    const cublasLtEpilogue_t epi = dgelu ? CUBLASLT_EPILOGUE_DGELU
                                   : key.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                              : CUBLASLT_EPILOGUE_GELU_AUX;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    const int64_t ld = g.ldc;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
    if (nb > 1)
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, &key.stride_c,
                                                  sizeof(key.stride_c)));
  }
  if (key.bias) {
    if (!gelu) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    }
    // (BIAS_DATA_TYPE left as it is: D's type, bf16 for a bf16 output, whose
    // bias is the bf16 copy; fp32 otherwise.)
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    if (nb > 1)
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &key.stride_bias,
                                                  sizeof(key.stride_bias)));
  }
  cublasLtMatmulPreference_t pr = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pr));
  Preference pref(pr);
  const uint64_t ws = ctx.blas.workspace_bytes;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pr, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t al[3] = {key.align_a, key.align_b, key.align_c};
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pr, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2], 4));
  if (key.out16) {
    // A bf16 output is the fp32 sum rounded once (ops/matmul.h). The default
    // mask also admits split-K algorithms that add their partial sums in the
    // output type (INPLACE, OUTPUT_TYPE: bf16 partials, an error that scales
    // with the partials rather than the result, seen chosen on an L40 by
    // TransformerEngine); only partials kept in the compute type (fp32) are
    // admitted, and algorithms without split-K (NONE, mask 0) always are.
    const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pr, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
                                                      sizeof(reduction)));
  }
  cublasLtMatmulHeuristicResult_t result;
  std::memset(&result, 0, sizeof(result));
  int found = 0;
  // (NOT_SUPPORTED, like found = 0: nothing for this configuration. A bf16
  // output refused otherwise falls back too, said once: a refusal that is
  // not about support would otherwise hide behind the fallback.)
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, d, p.first.get(), p.second.get(), p.out.get(), p.out.get(), pr, 1, &result,
                                     &found);
  if (st != CUBLAS_STATUS_NOT_SUPPORTED && !key.out16) CUBLAS_CHECK(st);
  if (st != CUBLAS_STATUS_SUCCESS) found = 0;
  if (found > 0) p.algo = result.algo;
  if (key.out16 && !p.algo)
    std::fprintf(stderr,
                 "note: cuBLASLt has no bf16-output algorithm for M=%lld N=%lld K=%lld%s%s%s (%s): the GEMM writes "
                 "fp32 and %s\n",
                 static_cast<long long>(key.M), static_cast<long long>(key.N), static_cast<long long>(key.K),
                 key.bucketed ? " (a bucket: rows up to these)" : "", key.bias ? " with a bf16 bias" : "",
                 gelu ? " and the GELU_AUX epilogue" : dgelu ? " and the DGELU epilogue" : "",
                 st == CUBLAS_STATUS_SUCCESS ? "none found" : cublasGetStatusString(st),
                 gelu || dgelu ? "the GELU kernels read it" : "a pass rounds it");
  return plans.emplace(key, std::move(p)).first->second;
}

// Dims that change from call to call (GemmArgs::bucket_m, bucket_k: an
// expert's rows in a packed route, different every step) would make a plan,
// and a heuristic query, per row count: thousands over a run, each kept.
// Instead such a dim is rounded up to its bucket, four to an octave
// (core/size_class.h: 600 -> 640, 1000 -> 1024; at most 25% over), and the
// bucket's plan is made
// for that shape (the heuristic picks for the bucket's largest); each call
// sets the layouts to its own dims. (cuBLASLt checks the algorithm against
// the call's shape; one it refuses runs on an exact plan instead: gemm().)
int64_t bucket(int64_t v) { return static_cast<int64_t>(round_up_quarter_octave(static_cast<uint64_t>(v))); }

void set_rows_cols(cublasLtMatrixLayout_t l, int64_t rows, int64_t cols) {
  const uint64_t r = static_cast<uint64_t>(rows), c = static_cast<uint64_t>(cols);
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &r, sizeof(r)));
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &c, sizeof(c)));
}

// A bucket's plan's layouts at g's own M and K (as plan_for lays them out).
void set_dims(Plan& p, const GemmArgs& g) {
  if (g.trans_b) set_rows_cols(p.first.get(), g.K, g.N);
  else set_rows_cols(p.first.get(), g.N, g.K);
  if (g.trans_a) set_rows_cols(p.second.get(), g.M, g.K);
  else set_rows_cols(p.second.get(), g.K, g.M);
  set_rows_cols(p.out.get(), g.N, g.M);
}
}  // namespace

bool gemm(Ctx& ctx, const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return true;
  SY_CHECK(g.K > 0, "gemm: K = 0");
  const bool out16 = g.C16 != nullptr;
  SY_CHECK(!out16 || (g.C == nullptr && g.beta == 0.f && g.bf16), "gemm: a bf16 output is written (beta 0) from bf16 operands");
  SY_CHECK(g.epilogue == Epilogue::none || (out16 && g.aux && (g.epilogue == Epilogue::gelu || !g.bias)),
           "gemm: a GELU epilogue has a bf16 output and an aux matrix (DGELU: no bias)");
  // (cuBLASLt's aux leading dimension and batch stride: multiples of 8
  // elements; and the aux matrix 16-byte aligned, every batch's, as the bias
  // must be below: the heuristic's alignment preferences name A, B, C and D
  // only, and PyTorch met a CUDA 13 heuristic that took an unaligned
  // epilogue pointer for an aligned one - a misaligned-address fault, which
  // ends every later test of the process. An expert's pre block starting
  // mid-row of 8 is the case; it falls back.)
  if (g.epilogue != Epilogue::none &&
      (g.ldc % 8 != 0 || (g.batch > 1 && g.stride_c % 8 != 0) || alignment(g.aux, g.batch, g.stride_c * 2) < 16))
    return out16_refused();
  void* const C = out16 ? g.C16 : static_cast<void*>(g.C);
  SY_CHECK(g.batch >= 1 && g.batch <= 65535, "gemm: batch " << g.batch << " (1 to 65535)");
  SY_CHECK(ctx.blas.cublaslt, "gemm: the context has no cuBLASLt handle");
  auto handle = static_cast<cublasLtHandle_t>(ctx.blas.cublaslt);
  float beta = g.beta;
  const float* bias = g.bias;
  // A bf16 output adds its bias rounded to bf16 (ops/matmul.h): a copy,
  // aligned, which the epilogue reads instead (bias_at). (Rounded before
  // the plan is known: where none serves, the fallback's fp32 GEMM rounds
  // it again, fp32_of_bf16_output.)
  Tensor bias16;
  const void* bias_at = bias;
  int64_t stride_bias = g.stride_bias;
  if (out16 && bias) stride_bias = rounded_bias<__nv_bfloat16>(ctx, g, bias16), bias_at = bias16.raw();
  // cuBLASLt's bias loads want 16-byte alignment, of every batch's bias too.
  const bool bias_aligned = bias && alignment(bias_at, g.batch, stride_bias * (out16 ? 2 : 4)) >= 16;
  // The bias by its own kernel (C = bias [+ C]), the GEMM then adding onto it.
  auto bias_by_kernel = [&] {
    const dim3 grid(static_cast<unsigned>(grid_for(g.M * g.N)), static_cast<unsigned>(g.batch));
    add_bias_rows<<<grid, kBlock, 0, stream(ctx)>>>(g.C, g.ldc, bias, g.M, g.N, beta != 0.f, g.stride_c,
                                                    g.stride_bias);
    CUDA_CHECK(cudaGetLastError());
    bias = nullptr, bias_at = nullptr;
    beta = 1.f;
  };
  if (bias && !bias_aligned) {
    if (out16) return out16_refused();  // (a bias kernel then a GEMM onto it would round twice; the copy is aligned)
    bias_by_kernel();
  }

  const int64_t nb = g.batch;
  const int64_t ab = g.bf16 ? 2 : 4;  // bytes per element of A and B
  // The plan's shape: a bucket's where M or K varies (bucket() above), as
  // long as the layouts allow it (a layout's rows within its leading dim).
  GemmArgs shape = g;
  bool bucketed = false;
  if (nb == 1 && (g.bucket_m || g.bucket_k)) {
    shape.M = g.bucket_m ? bucket(g.M) : g.M;
    shape.K = g.bucket_k ? bucket(g.K) : g.K;
    bucketed = (!g.trans_b || shape.K <= g.ldb) && (g.trans_a ? shape.M <= g.lda : shape.K <= g.lda);
    if (!bucketed) shape.M = g.M, shape.K = g.K;
  }
  AlgoKey key{ctx.device.index, g.trans_a, g.trans_b, g.bf16, bias != nullptr, beta != 0.f, out16, shape.M, g.N,
              shape.K, g.lda, g.ldb, g.ldc, alignment(g.B, nb, g.stride_b * ab), alignment(g.A, nb, g.stride_a * ab),
              alignment(C, nb, g.stride_c * (out16 ? 2 : 4)), nb, nb > 1 ? g.stride_a : 0,
              nb > 1 ? g.stride_b : 0, nb > 1 ? g.stride_c : 0, nb > 1 && bias ? stride_bias : 0,
              bucketed, bias ? alignment(bias_at, nb, stride_bias * (out16 ? 2 : 4)) : 0, g.epilogue,
              g.aux ? alignment(g.aux, nb, g.stride_c * 2) : 0, ctx.blas.workspace_bytes};
  std::lock_guard<std::mutex> lock(plan_mutex);
  auto plan_of = [&](const AlgoKey& k, const void* b) {
    Plan* q = &plan_for(ctx, handle, k.bucketed ? shape : g, k, b, g.aux);
    if (k.bucketed) set_dims(*q, g);
    return q;
  };
  // key's plan, with this call's bias; where no algorithm takes the BIAS
  // epilogue for this shape and these alignments, the bias by its own kernel
  // and the plain GEMM onto it. Null: no bf16-output algorithm (fall back).
  // Its algo may be empty (none at all).
  auto find = [&]() -> Plan* {
    Plan* q = plan_of(key, bias_at);
    // A bucket's shape has none: this call's own shape may. Each row count
    // then has its own plan (one heuristic query and note per count, cached
    // like any plan), so a count's path and bits do not depend on which
    // counts came before (a bucket marked "none" after its first count
    // without an algorithm would send counts that had one to the fp32
    // fallback from then on: other bits after a resume than before it).
    if (!q->algo && out16 && key.bucketed) {
      key.bucketed = false, key.M = g.M, key.K = g.K;
      ++bucket_fallbacks;
      q = plan_of(key, bias_at);
    }
    if (!q->algo && out16) return nullptr;
    if (!q->algo && bias) {
      bias_by_kernel();
      key.bias = false, key.beta = true, key.stride_bias = 0, key.align_bias = 0;
      q = plan_of(key, nullptr);
    }
    if (q->algo && key.bias)  // (this call's bias: the plan holds the first call's)
      CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(q->desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_at, sizeof(bias_at)));
    if (q->algo && key.epilogue != Epilogue::none)  // (and its aux matrix)
      CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(q->desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)));
    return q;
  };
  const float alpha = 1.f;
  Plan* p = nullptr;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  for (;;) {
    p = find();
    if (!p) {
      ++out16_fallbacks;
      return false;
    }
    if (p->algo) {
      st = cublasLtMatmul(handle, p->desc.get(), &alpha, g.B, p->first.get(), g.A, p->second.get(), &beta, C,
                          p->out.get(), C, p->out.get(), &*p->algo, ctx.blas.workspace, ctx.blas.workspace_bytes,
                          stream(ctx));
      // Done, unless a bucket's algorithm was refused at this call's shape
      // (cuBLASLt checks the layouts and workspace before it launches
      // anything: INVALID_VALUE or NOT_SUPPORTED, nothing written).
      if (!key.bucketed || (st != CUBLAS_STATUS_INVALID_VALUE && st != CUBLAS_STATUS_NOT_SUPPORTED)) break;
    } else {
      SY_CHECK(key.bucketed, "cuBLASLt found no " << (g.bf16 ? "bf16-input" : "fp32") << " algorithm for M=" << g.M
                                                  << " N=" << g.N << " K=" << g.K << " (alignments A " << key.align_b
                                                  << ", B " << key.align_a << ", C " << key.align_c << " bytes)");
    }
    // This shape's own plan, as without buckets (counted: a test checks a
    // bucket's algorithm serves its rows).
    key.bucketed = false, key.M = g.M, key.K = g.K;
    ++bucket_fallbacks;
  }
  // The heuristic offered it and the launch refused it all the same: the
  // next call with this key falls back at once. With a GELU epilogue,
  // INVALID_VALUE too (the aux pointer's alignment is in the key, so this is
  // a requirement of cuBLASLt's that the heuristic did not check, or a
  // mistake in our aux attributes): the same values through the GELU
  // kernels, a note naming the GEMM, and Bf16OutputGemmsTakeTheirEpilogues
  // fails on the count, so neither passes unseen.
  const bool refused = st == CUBLAS_STATUS_NOT_SUPPORTED ||
                       (key.epilogue != Epilogue::none && st == CUBLAS_STATUS_INVALID_VALUE);
  if (out16 && refused) {
    if (key.epilogue != Epilogue::none)
      std::fprintf(stderr, "note: cuBLASLt refused its %s algorithm for M=%lld N=%lld K=%lld at launch (%s): fp32 "
                   "and the GELU kernels instead\n", key.epilogue == Epilogue::gelu ? "GELU_AUX" : "DGELU",
                   static_cast<long long>(key.M), static_cast<long long>(key.N), static_cast<long long>(key.K),
                   cublasGetStatusString(st));
    p->algo.reset();
    ++out16_fallbacks;
    return false;
  }
  CUBLAS_CHECK(st);
  return true;
}

size_t gemm_plan_count() {
  std::lock_guard<std::mutex> lock(plan_mutex);
  return plans.size();
}

int64_t gemm_bucket_fallbacks() {
  std::lock_guard<std::mutex> lock(plan_mutex);
  return bucket_fallbacks;
}

int64_t gemm_bf16_output_fallbacks() {
  std::lock_guard<std::mutex> lock(plan_mutex);
  return out16_fallbacks;
}

Tensor bf16_copy(Ctx& ctx, const Tensor& t) {
  Tensor r = Tensor::empty(t.shape(), DType::bf16, ctx);
  cuda::to_bf16(ctx, r, t);
  return r;
}

namespace {
// What a bf16 output of g holds before its one rounding, in fp32 scratch of
// `shape`: the GEMM with g's bias rounded to bf16 (as fp32 values), no
// epilogue. (Where cuBLASLt has no bf16-output algorithm for g.)
Tensor fp32_of_bf16_output(Ctx& ctx, GemmArgs g, const Shape& shape) {
  Tensor z = Tensor::empty(shape, DType::f32, ctx), bias;
  if (g.bias) g.stride_bias = rounded_bias<float>(ctx, g, bias), g.bias = bias.data<float>();
  g.C16 = nullptr, g.C = z.data<float>(), g.epilogue = Epilogue::none, g.aux = nullptr;
  gemm(ctx, g);
  return z;
}
}  // namespace

void gemm_into(Ctx& ctx, GemmArgs g, Tensor& out) {
  if (out.dtype() == DType::f32) {
    g.C = out.data<float>();
    gemm(ctx, g);
    return;
  }
  g.C16 = out.raw();
  if (gemm(ctx, g)) return;
  // No bf16-output algorithm: fp32 scratch, then rounded once.
  cuda::to_bf16(ctx, out, fp32_of_bf16_output(ctx, g, out.shape()));
}

void gemm_gelu_into(Ctx& ctx, GemmArgs g, Tensor& act, Tensor& pre) {
  SY_CHECK(act.dtype() == pre.dtype() && act.numel() == pre.numel(), "gemm_gelu_into: act and pre differ");
  SY_CHECK(g.beta == 0.f, "gemm_gelu_into: pre and act are written (beta 0)");
  if (pre.dtype() == DType::f32) {  // (fp32: the separate ops are the epilogue exactly, ops/matmul.h)
    gemm_into(ctx, g, pre);
    cuda::gelu_forward(ctx, act, pre);
    return;
  }
  g.C = nullptr, g.C16 = act.raw(), g.epilogue = Epilogue::gelu, g.aux = pre.raw();
  if (gemm(ctx, g)) return;
  // No such algorithm: z in fp32, pre = bf16(z), act = bf16(gelu(z)).
  const Tensor z = fp32_of_bf16_output(ctx, g, pre.shape());
  cuda::to_bf16(ctx, pre, z);
  cuda::gelu_forward(ctx, act, z);
}

void gemm_dgelu_into(Ctx& ctx, GemmArgs g, Tensor& dpre, const Tensor& pre) {
  SY_CHECK(dpre.dtype() == pre.dtype() && dpre.numel() == pre.numel(), "gemm_dgelu_into: dpre and pre differ");
  SY_CHECK(!g.bias && g.beta == 0.f, "gemm_dgelu_into: dpre is written, with no bias");
  if (dpre.dtype() == DType::bf16) {
    g.C = nullptr, g.C16 = dpre.raw(), g.epilogue = Epilogue::dgelu, g.aux = const_cast<void*>(pre.raw());
    if (gemm(ctx, g)) return;
  }
  // fp32 (or no such algorithm): the product in fp32 scratch, then
  // gelu_backward (which adds into an f32 dpre: zeroed first).
  Tensor dz = Tensor::empty(dpre.shape(), DType::f32, ctx);
  g.C16 = nullptr, g.C = dz.data<float>(), g.epilogue = Epilogue::none, g.aux = nullptr;
  gemm(ctx, g);
  if (dpre.dtype() == DType::f32) dpre.zero(ctx);
  cuda::gelu_backward(ctx, dpre, dz, pre);
}

void matmul_forward(Ctx& ctx, const MatmulArgs& a) {
  const int64_t N = a.x.dim(0), K = a.x.dim(1), M = a.w.dim(a.w_transposed ? 0 : 1);
  const bool bf16 = a.w_bf16 != nullptr;
  const Tensor x16 = !bf16 ? Tensor() : a.x.dtype() == DType::bf16 ? a.x : bf16_copy(ctx, a.x);  // (bf16: rounded by its producer)
  if (a.x_bf16) *a.x_bf16 = x16;
  if (N == 0) return;
  GemmArgs g;
  g.bf16 = bf16;
  g.M = N, g.N = M, g.K = K;
  g.A = bf16 ? x16.raw() : static_cast<const void*>(a.x.data<float>()), g.lda = K;
  g.trans_b = a.w_transposed;  // W (M, K): y = x W^T
  g.B = bf16 ? a.w_bf16->raw() : static_cast<const void*>(a.w.data<float>()), g.ldb = a.w_transposed ? K : M;
  g.beta = a.accumulate ? 1.f : 0.f;
  g.ldc = M;
  g.bias = a.b.defined() ? a.b.data<float>() : nullptr;
  if (a.gelu)
    gemm_gelu_into(ctx, g, *a.gelu, a.y);
  else
    gemm_into(ctx, g, a.y);
}

void matmul_backward(Ctx& ctx, const MatmulBackwardArgs& a) {
  const int64_t N = a.x.dim(0), K = a.x.dim(1), M = a.w.dim(a.w_transposed ? 0 : 1);
  if (N == 0) return;
  const bool bf16 = a.w_bf16 != nullptr;
  const Tensor dy16 = !bf16 || !(a.dx || a.dw) ? Tensor()
                      : a.dy.dtype() == DType::bf16 ? a.dy  // values that are bf16 already
                                                    : bf16_copy(ctx, a.dy);
  // x as the forward rounded it (a bf16 x), or rounded here
  const Tensor x16 = bf16 && a.dw ? (a.x.dtype() == DType::bf16 ? a.x : bf16_copy(ctx, a.x)) : Tensor();
  const void* dy = bf16 ? dy16.raw() : static_cast<const void*>(a.dy.data<float>());
  if (a.dx) {  // dx (N, K) += dy (N, M) W^T, or dy W with W (M, K)
    GemmArgs g;
    g.bf16 = bf16;
    g.trans_b = !a.w_transposed;
    g.M = N, g.N = K, g.K = M;
    g.A = dy, g.lda = M;
    g.B = bf16 ? a.w_bf16->raw() : static_cast<const void*>(a.w.data<float>()), g.ldb = a.w_transposed ? K : M;
    g.beta = a.dx_accumulate ? 1.f : 0.f;
    g.ldc = K;
    if (a.gelu_pre)
      gemm_dgelu_into(ctx, g, *a.dx, *a.gelu_pre);
    else
      gemm_into(ctx, g, *a.dx);
  }
  if (a.dw && !a.w_transposed) {  // dW (K, M) += x^T (K, N) dy (N, M)
    GemmArgs g;
    g.bf16 = bf16;
    g.trans_a = true;
    g.M = K, g.N = M, g.K = N;
    g.A = bf16 ? x16.raw() : static_cast<const void*>(a.x.data<float>()), g.lda = K;
    g.B = dy, g.ldb = M;
    g.beta = 1.f;
    g.C = a.dw->data<float>(), g.ldc = M;
    gemm(ctx, g);
  }
  if (a.dw && a.w_transposed) {  // dW (M, K) += dy^T (M, N) x (N, K)
    GemmArgs g;
    g.bf16 = bf16;
    g.trans_a = true;
    g.M = M, g.N = K, g.K = N;
    g.A = dy, g.lda = M;
    g.B = bf16 ? x16.raw() : static_cast<const void*>(a.x.data<float>()), g.ldb = K;
    g.beta = 1.f;
    g.C = a.dw->data<float>(), g.ldc = K;
    gemm(ctx, g);
  }
  if (a.db) {
    if (a.dy.dtype() == DType::bf16)
      column_sums_into(ctx, elems<Bf16>(a.dy), N, M, a.db->data<float>());
    else
      column_sums_into(ctx, a.dy.data<float>(), N, M, a.db->data<float>());
  }
}

}  // namespace sy::ops::cuda
