// The expert GEMM variants of bench_expert_gemm.h. cuBLAS is column-major:
// the row-major Y_g (n, N) = X_g (n, K) W_g (K, N) is the column-major
// Y_g^T (N, n) = W_g^T (N, K) X_g^T (K, n), so each call passes m = N,
// n = n_g, k = K, A = W_g (ld N), B = X_g (ld K), C = Y_g (ld N).
#include "examples/bench_expert_gemm.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "examples/bench_common.h"
#include "ops/cuda/gemm.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/random.h"

namespace sy::bench {
namespace {

constexpr int kStreams = 4;

cudaStream_t stream_of(const Ctx& ctx) { return static_cast<cudaStream_t>(ctx.stream.handle); }

// A bf16 (rows, cols) matrix of normal values times `scale`, drawn on ctx.
Tensor random_bf16(Ctx& ctx, int64_t rows, int64_t cols, uint64_t seed, float scale) {
  Tensor f = Tensor::empty({rows, cols}, DType::f32, ctx), b = Tensor::empty({rows, cols}, DType::bf16, ctx);
  ops::random_normal(ctx, f, RandomKey{seed, 0, 0, 0}, scale);
  ops::to_bf16(ctx, b, f);
  return b;
}

const void* at(const Tensor& t, int64_t element) { return static_cast<const char*>(t.raw()) + element * 2; }
void* at(Tensor& t, int64_t element) { return static_cast<char*>(t.raw()) + element * 2; }

}  // namespace

// One direction's operands: up (K = d, N = hidden) or down (K = hidden, N = d).
struct Direction {
  std::string name;
  int64_t K = 0, N = 0;
  Tensor x, xp, w, y, yp, y1;      // packed and padded inputs, the weights (E K, N), the outputs
  Tensor a_ptr, b_ptr, c_ptr;      // the grouped call's device pointer arrays (experts with rows)
  std::map<int64_t, Tensor> want;  // expert -> its rows' product on the CPU (host f32)
};

struct ExpertGemmBench::State {
  Ctx& ctx;
  int64_t E = 0, cap = 0, R = 0;
  std::vector<int64_t> n, offset;  // rows per expert (clamped), packed offsets (E + 1)
  std::vector<Direction> dirs;
  cudaStream_t side[kStreams] = {};
  cublasHandle_t side_blas[kStreams] = {};
  cudaEvent_t fork = nullptr, join[kStreams] = {};
  explicit State(Ctx& c) : ctx(c) {}
  // (Here, not in ~ExpertGemmBench: also where the constructor threw part way.)
  ~State() {
    cudaStreamSynchronize(stream_of(ctx));
    for (int i = 0; i < kStreams; ++i) {
      if (side_blas[i]) cublasDestroy(side_blas[i]);
      if (side[i]) cudaStreamDestroy(side[i]);
      if (join[i]) cudaEventDestroy(join[i]);
    }
    if (fork) cudaEventDestroy(fork);
  }
};

ExpertGemmBench::ExpertGemmBench(Ctx& ctx, const ExpertGemmShape& s, uint64_t seed) : st_(new State(ctx)) {
  SY_CHECK(!ctx.device.is_cpu(), "bench_expert_gemm: a CUDA context is needed");
  State& st = *st_;
  st.E = s.experts;
  st.cap = static_cast<int64_t>(std::ceil(s.capacity_factor * double(s.tokens) * double(s.top_k) / double(s.experts)));
  // The route: each token's top_k of E standard normal scores (a softmax's
  // top-k is the logits'), each expert's rows clamped to the capacity.
  Rng rng(seed);
  st.n.assign(st.E, 0);
  std::vector<double> score(st.E);
  std::vector<int64_t> order(st.E);
  for (int64_t t = 0; t < s.tokens; ++t) {
    for (double& v : score) v = rng.normal();
    for (int64_t g = 0; g < st.E; ++g) order[g] = g;
    std::partial_sort(order.begin(), order.begin() + s.top_k, order.end(),
                      [&](int64_t a, int64_t b) { return score[a] > score[b]; });
    for (int64_t j = 0; j < s.top_k; ++j) ++st.n[order[j]];
  }
  st.offset.assign(st.E + 1, 0);
  for (int64_t g = 0; g < st.E; ++g) {
    st.n[g] = std::min(st.n[g], st.cap);
    st.offset[g + 1] = st.offset[g] + st.n[g];
  }
  st.R = st.offset[st.E];

  for (int d = 0; d < 2; ++d) {
    Direction dir;
    dir.name = d == 0 ? "up" : "down";
    dir.K = d == 0 ? s.d : s.hidden;
    dir.N = d == 0 ? s.hidden : s.d;
    dir.x = random_bf16(ctx, st.R, dir.K, seed + 10 * d + 1, 1.f);
    dir.w = random_bf16(ctx, st.E * dir.K, dir.N, seed + 10 * d + 2, 1.f / std::sqrt(float(dir.K)));
    // Padded: expert g's n_g rows of x at row g cap, the rest random (multiplied all the same).
    dir.xp = random_bf16(ctx, st.E * st.cap, dir.K, seed + 10 * d + 3, 1.f);
    for (int64_t g = 0; g < st.E; ++g)
      if (st.n[g] > 0)
        CUDA_CHECK(cudaMemcpyAsync(at(dir.xp, g * st.cap * dir.K), at(dir.x, st.offset[g] * dir.K), st.n[g] * dir.K * 2,
                                   cudaMemcpyDeviceToDevice, stream_of(ctx)));
    dir.y = Tensor::empty({st.R, dir.N}, DType::bf16, ctx);
    dir.yp = Tensor::empty({st.E * st.cap, dir.N}, DType::bf16, ctx);
    dir.y1 = Tensor::empty({st.R, dir.N}, DType::bf16, ctx);
    std::vector<int64_t> a, b, c;
    for (int64_t g = 0; g < st.E; ++g) {
      if (st.n[g] == 0) continue;
      a.push_back(reinterpret_cast<int64_t>(at(dir.w, g * dir.K * dir.N)));
      b.push_back(reinterpret_cast<int64_t>(at(dir.x, st.offset[g] * dir.K)));
      c.push_back(reinterpret_cast<int64_t>(at(dir.y, st.offset[g] * dir.N)));
    }
    dir.a_ptr = Tensor::from_host(a).to(ctx);
    dir.b_ptr = Tensor::from_host(b).to(ctx);
    dir.c_ptr = Tensor::from_host(c).to(ctx);
    st.dirs.push_back(std::move(dir));
  }
  for (int i = 0; i < kStreams; ++i) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&st.side[i], cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&st.side_blas[i]));
    CUBLAS_CHECK(cublasSetStream(st.side_blas[i], st.side[i]));
    CUDA_CHECK(cudaEventCreateWithFlags(&st.join[i], cudaEventDisableTiming));
  }
  CUDA_CHECK(cudaEventCreateWithFlags(&st.fork, cudaEventDisableTiming));
  CUDA_CHECK(cudaStreamSynchronize(stream_of(ctx)));
}

ExpertGemmBench::~ExpertGemmBench() = default;

std::vector<ExpertGemmVariant> ExpertGemmBench::variants() {
  State& st = *st_;
  std::vector<ExpertGemmVariant> out;
  const float one = 1.f, zero = 0.f;
  for (Direction& dir : st.dirs) {
    Direction* d = &dir;
    const int64_t K = d->K, N = d->N;
    const double flops = 2.0 * double(st.R) * K * N;
    const std::string shape = "E" + std::to_string(st.E) + " rows " + std::to_string(st.R) + " (cap " +
                              std::to_string(st.cap) + ") K" + std::to_string(K) + " N" + std::to_string(N) + " bf16";
    // Y_g = X_g W_g on `handle` (on its stream), packed layout.
    auto expert_gemm = [d, &st, one, zero](cublasHandle_t handle, int64_t g) {
      const int64_t K = d->K, N = d->N;
      CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(N), int(st.n[g]), int(K), &one,
                                at(d->w, g * K * N), CUDA_R_16BF, int(N), at(d->x, st.offset[g] * K), CUDA_R_16BF,
                                int(K), &zero, at(d->y, st.offset[g] * N), CUDA_R_16BF, int(N), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    };
    // The variant's check: its output poisoned (every bf16 0xffff, a NaN),
    // one run, then the elements of experts 0 and E-1 (rows on from
    // g * cap where padded, else the packed offset) off the CPU's product
    // (bf16 class: 1e-2 relative, floor 1e-2 rms); only_first: expert 0's
    // alone (one_gemm multiplies every row by W_0). A variant that wrote
    // nothing, or the wrong rows, is all wrong.
    auto checked = [d, &st](ExpertGemmVariant v, Tensor* y, bool padded, bool only_first) {
      std::function<void()> run = v.run;
      v.check = [d, &st, run, y, padded, only_first]() -> int64_t {
        CUDA_CHECK(cudaMemsetAsync(y->raw(), 0xff, y->nbytes(), stream_of(st.ctx)));
        run();
        int64_t wrong = 0;
        for (int64_t g : {int64_t(0), st.E - 1}) {
          if (st.n[g] == 0 || (only_first && g != 0)) continue;
          if (!d->want.count(g)) {
            Tensor xh = d->x.rows(st.offset[g], st.offset[g + 1]).to(host_ctx()).to(DType::f32);
            Tensor wh = d->w.rows(g * d->K, (g + 1) * d->K).to(host_ctx()).to(DType::f32);
            Tensor yc = Tensor::empty({st.n[g], d->N}, DType::f32, host_ctx());
            ops::matmul_forward(host_ctx(), {yc, xh, wh, Tensor()});
            d->want.emplace(g, std::move(yc));
          }
          const int64_t r0 = padded ? g * st.cap : st.offset[g];
          wrong += count_wrong(y->rows(r0, r0 + st.n[g]), d->want.at(g), 1e-2);
        }
        return wrong;
      };
      return v;
    };
    const std::string base = "expert_gemm_" + d->name + "_";

    out.push_back(checked({base + "lt_loop", shape, "the product's: a cuBLASLt GEMM per expert (ops/cuda/gemm.h)", flops,
                   [d, &st] {
                     for (int64_t g = 0; g < st.E; ++g) {
                       if (st.n[g] == 0) continue;
                       ops::cuda::GemmArgs a;
                       a.bf16 = true;
                       a.M = st.n[g];
                       a.N = d->N;
                       a.K = d->K;
                       a.A = at(d->x, st.offset[g] * d->K);
                       a.lda = d->K;
                       a.B = at(d->w, g * d->K * d->N);
                       a.ldb = d->N;
                       a.C16 = at(d->y, st.offset[g] * d->N);
                       a.ldc = d->N;
                       a.bucket_m = true;
                       SY_CHECK(ops::cuda::gemm(st.ctx, a), "cuBLASLt has no bf16-output plan here");
                     }
                   }}, &d->y, false, false));

    out.push_back(checked({base + "loop", shape, "cublasGemmEx per expert, one stream", flops,
                   [&st, expert_gemm] {
                     auto h = static_cast<cublasHandle_t>(st.ctx.blas.cublas);
                     for (int64_t g = 0; g < st.E; ++g)
                       if (st.n[g] > 0) expert_gemm(h, g);
                   }}, &d->y, false, false));

    out.push_back(checked({base + "loop_streams", shape,
                   "cublasGemmEx per expert over " + std::to_string(kStreams) + " streams", flops,
                   [&st, expert_gemm] {
                     CUDA_CHECK(cudaEventRecord(st.fork, stream_of(st.ctx)));
                     for (int i = 0; i < kStreams; ++i) CUDA_CHECK(cudaStreamWaitEvent(st.side[i], st.fork, 0));
                     for (int64_t g = 0; g < st.E; ++g)
                       if (st.n[g] > 0) expert_gemm(st.side_blas[g % kStreams], g);
                     for (int i = 0; i < kStreams; ++i) {
                       CUDA_CHECK(cudaEventRecord(st.join[i], st.side[i]));
                       CUDA_CHECK(cudaStreamWaitEvent(stream_of(st.ctx), st.join[i], 0));
                     }
                   }}, &d->y, false, false));

    out.push_back(checked({base + "grouped", shape, "one cublasGemmGroupedBatchedEx, a group per expert", flops,
                   [d, &st] {
                     const int G = static_cast<int>(d->a_ptr.numel());
                     std::vector<cublasOperation_t> op(G, CUBLAS_OP_N);
                     std::vector<int> m(G, int(d->N)), n, k(G, int(d->K)), lda(G, int(d->N)), ldb(G, int(d->K)),
                         ldc(G, int(d->N)), size(G, 1);
                     for (int64_t g = 0; g < st.E; ++g)
                       if (st.n[g] > 0) n.push_back(int(st.n[g]));
                     std::vector<float> alpha(G, 1.f), beta(G, 0.f);
                     CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
                         static_cast<cublasHandle_t>(st.ctx.blas.cublas), op.data(), op.data(), m.data(), n.data(),
                         k.data(), alpha.data(), reinterpret_cast<const void* const*>(d->a_ptr.raw()), CUDA_R_16BF,
                         lda.data(), reinterpret_cast<const void* const*>(d->b_ptr.raw()), CUDA_R_16BF, ldb.data(),
                         beta.data(), reinterpret_cast<void* const*>(d->c_ptr.raw()), CUDA_R_16BF, ldc.data(), G,
                         size.data(), CUBLAS_COMPUTE_32F));
                   }}, &d->y, false, false));

    // The padded layout (expert g's block at row g cap) multiplied `rows`
    // rows a block, in one strided-batched call.
    auto strided = [d, &st, one, zero](int64_t rows) {
      return [d, &st, one, zero, rows] {
        const int64_t K = d->K, N = d->N;
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(
            static_cast<cublasHandle_t>(st.ctx.blas.cublas), CUBLAS_OP_N, CUBLAS_OP_N, int(N), int(rows), int(K), &one,
            d->w.raw(), CUDA_R_16BF, int(N), K * N, d->xp.raw(), CUDA_R_16BF, int(K), st.cap * K, &zero,
            d->yp.raw(), CUDA_R_16BF, int(N), st.cap * N, int(st.E), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      };
    };
    out.push_back(checked({base + "strided", shape,
                           "padded: one cublasGemmStridedBatchedEx, " + std::to_string(st.cap) +
                               " rows an expert (the capacity; work column: routed rows only)",
                           flops, strided(st.cap)},
                          &d->yp, true, false));
    // The same at this route's largest expert (rounded up to 16 rows), not
    // the capacity: what moe.pad_to_largest does (a packed route knows its
    // counts on the host, so it pads only that far).
    const int64_t most = *std::max_element(st.n.begin(), st.n.end());
    const int64_t tight = std::min(st.cap, (most + 15) / 16 * 16);
    out.push_back(checked({base + "strided_tight", shape,
                           "padded to the largest expert: one cublasGemmStridedBatchedEx, " + std::to_string(tight) +
                               " rows an expert",
                           flops, strided(tight)},
                          &d->yp, true, false));

    out.push_back(checked({base + "one_gemm", shape, "every routed row times W_0, one cublasGemmEx: the FLOPs ungrouped", flops,
                   [d, &st, one, zero] {
                     CUBLAS_CHECK(cublasGemmEx(static_cast<cublasHandle_t>(st.ctx.blas.cublas), CUBLAS_OP_N,
                                               CUBLAS_OP_N, int(d->N), int(st.R), int(d->K), &one, d->w.raw(),
                                               CUDA_R_16BF, int(d->N), d->x.raw(), CUDA_R_16BF, int(d->K), &zero,
                                               d->y1.raw(), CUDA_R_16BF, int(d->N), CUBLAS_COMPUTE_32F,
                                               CUBLAS_GEMM_DEFAULT));
                   }}, &d->y1, false, true));
  }
  return out;
}

}  // namespace sy::bench
