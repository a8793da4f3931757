// Router losses and routing sums on CUDA (ops/router_loss.h). No atomics:
// every sum has a fixed shape that depends on the problem size only.
//
// routing_sums: stage 1, block b takes a chunk of kItems items: thread g sums
//   column g of p in double (item order) and counts the chunk's assignments
//   that chose g; the entropy terms of a thread's columns go through a fixed
//   tree; thread 0 counts assigned, dropped and unserved. Stage 2 adds the
//   chunks in a fixed order (add_partials). Counts are exact; the double
//   sums differ from the CPU's serial order by rounding only. Blocks of the power of two >= G threads
//   (32 to kBlock) and chunks of 32 items: at N 16384, G 64 that is 512
//   blocks of 64 threads, where 64 blocks of 256 threads (192 of them idle),
//   each walking 256 items, took 0.22 ms on an H200. routing_sums_logits
//   is the same kernel with p = score_fn(logits): a warp a row first puts
//   the chunk's row maxima and sums in shared memory.
// router_backward: up to 128 groups a row in registers (see its kernel).
// load_balance_loss: one block reads the routing sums: thread g computes f_g,
//   P_g and the per-group gradient alpha G f_g / N with the CPU's operations,
//   thread 0 adds sum_g f P in group order and writes the value; the gradient
//   is added to every row. Nothing is read back.
// load_balance_loss_grouped: one block per run of items; thread g counts and
//   sums its column over the run serially (the CPU's order exactly); the run's
//   sum_g f P is added in group order by thread 0; one thread adds the runs in
//   run order and writes the value: bitwise the CPU's loss.
// z_loss: one warp per row (max, sum of exp in double), lse^2 per row summed
//   by sum_f64 on the device. budget_loss: one thread per row sums p c in group
//   order, rows by sum_f64 into device memory (C); the gradient, a constant
//   per column, is added by threads that read C and skip when C <= B, and one
//   thread writes the value: nothing is read back.
// realized_budget_loss: one thread per item adds lambda c_g / N at its kept
//   assignments (an item's groups are distinct) and its surrogate term; rows
//   by sum_f64_to_host. Given routing sums, one thread computes R from them
//   and the row threads read it: the condition R > B and the value stay on
//   the device.
#include "ops/cuda/common.cuh"
#include "ops/cuda/router_rows.cuh"
#include "ops/router_loss.h"

#include <algorithm>

namespace sy::ops::cuda {

namespace {
constexpr int64_t kItems = 32;  // items per stage-1 block of routing_sums
constexpr int kTail = 6;         // assigned, items, dropped, unserved, entropy, budget_dropped
constexpr int kWarps = kBlock / 32;
}  // namespace

// Where routing_sum_partials reads p: the probabilities in memory, or
// (logits set) score_fn of the logits, softmax from the chunk's row maxima
// and sums (rows(): a warp a row, in shared memory): router_scores' formula,
// its row sum added in another order (the same values up to rounding).
struct ProbSource {
  const float* probs;
  const float* logits;
  bool softmax;
  int64_t G;
};

// (Softmax only: sigmoid's p needs no row statistics. Every thread of the
// block returns or reaches the barrier alike.)
static __device__ void chunk_rows(const ProbSource& src, int64_t b0, int64_t b1, float* mx, float* sum) {
  if (!src.logits || !src.softmax) return;
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t i = b0 + threadIdx.x / 32; i < b1; i += warps) {
    const float* l = src.logits + i * src.G;
    float m = -INFINITY;
    for (int64_t g = lane; g < src.G; g += 32) m = fmaxf(m, l[g]);
    m = warp_max(m);
    float s = 0.f;
    for (int64_t g = lane; g < src.G; g += 32) s += expf(l[g] - m);
    s = warp_sum(s);
    if (lane == 0) mx[i - b0] = m, sum[i - b0] = s;
  }
  __syncthreads();
}

static __device__ __forceinline__ float prob_at(const ProbSource& src, int64_t i, int64_t g, const float* mx,
                                                const float* sum, int64_t b0) {
  if (!src.logits) return src.probs[i * src.G + g];
  const float l = src.logits[i * src.G + g];
  return src.softmax ? expf(l - mx[i - b0]) / sum[i - b0] : 1.f / (1.f + expf(-l));
}

static __global__ void routing_sum_partials(ProbSource src, const int32_t* group, const int32_t* slot, int64_t i0,
                                            int64_t i1, int64_t G, int64_t k, double* partial) {
  __shared__ double scratch[kBlock];
  __shared__ float row_max[kItems], row_sum[kItems];
  const int64_t width = 4 * G + kTail;
  const int64_t b0 = i0 + blockIdx.x * kItems, b1 = min(i1, b0 + kItems);
  double* out = partial + blockIdx.x * width;
  chunk_rows(src, b0, b1, row_max, row_sum);
  double entropy = 0;
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    double chosen = 0, prob = 0, kept = 0, cut = 0;
    for (int64_t i = b0; i < b1; ++i) {
      for (int64_t a = i * k; a < (i + 1) * k; ++a) {
        if (group[a] != g) continue;
        chosen += 1;
        kept += slot[a] >= 0;
        cut += slot[a] == -2;
      }
      const float p = prob_at(src, i, g, row_max, row_sum, b0);
      prob += p;
      if (p > 0) entropy -= p * logf(p);
    }
    out[g] = chosen;
    out[G + g] = prob;
    out[2 * G + g] = kept;
    out[3 * G + g] = cut;
  }
  entropy = block_sum(entropy, scratch);
  if (threadIdx.x == 0) {
    double assigned = 0, dropped = 0, unserved = 0, budget_dropped = 0;
    for (int64_t i = b0; i < b1; ++i) {
      bool served = false;
      for (int64_t a = i * k; a < (i + 1) * k; ++a) {
        if (group[a] < 0) continue;
        assigned += 1;
        if (slot[a] >= 0)
          served = true;
        else if (slot[a] == -2)
          budget_dropped += 1;
        else
          dropped += 1;
      }
      unserved += served ? 0 : 1;
    }
    double* tail = out + 4 * G;
    tail[0] = assigned, tail[1] = static_cast<double>(b1 - b0), tail[2] = dropped, tail[3] = unserved;
    tail[4] = entropy, tail[5] = budget_dropped;
  }
}

// Stage 2: a block per 32 of the width's columns; warp w's lane sums its
// column over chunks w, w + kAddWarps, ... in order, then lane e of warp 0
// adds the warps' sums in warp order (a fixed tree: the same bits every
// run). One thread a column walking every chunk was ~2 waits for memory a
// chunk on 262 threads (at N 16384, G 64: 512 chunks a thread, by a count;
// four times that at 65536).
constexpr int kAddWarps = 16;
static __global__ void __launch_bounds__(kAddWarps * 32)
    add_partials(const double* partial, int64_t blocks, int64_t width, double* sums) {
  __shared__ double part[kAddWarps][32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t e = blockIdx.x * 32 + lane;
  double s = 0;
  if (e < width)
    for (int64_t b = warp; b < blocks; b += kAddWarps) s += partial[b * width + e];
  part[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && e < width) {
    double t = 0;
    for (int w = 0; w < kAddWarps; ++w) t += part[w][lane];
    sums[e] = t;
  }
}

static void launch_routing_sums(Ctx& ctx, Tensor& sums, const ProbSource& src, const Route& r, int64_t i0,
                                int64_t i1) {
  const int64_t G = r.num_groups, width = 4 * G + kTail;
  const int64_t blocks = std::max<int64_t>(1, (i1 - i0 + kItems - 1) / kItems);
  Tensor partial = Tensor::empty({blocks * width}, DType::f64, ctx);
  int threads = 32;  // (a power of two: block_sum)
  while (threads < G && threads < kBlock) threads *= 2;
  routing_sum_partials<<<static_cast<unsigned>(blocks), threads, 0, stream(ctx)>>>(
      src, r.group.data<int32_t>(), r.slot.data<int32_t>(), i0, i1, G, r.k, partial.data<double>());
  CUDA_CHECK(cudaGetLastError());
  add_partials<<<static_cast<unsigned>((width + 31) / 32), kAddWarps * 32, 0, stream(ctx)>>>(
      partial.data<double>(), blocks, width, sums.data<double>());
  CUDA_CHECK(cudaGetLastError());
}

void routing_sums(Ctx& ctx, Tensor& sums, const Tensor& probs, const Route& r, int64_t i0, int64_t i1) {
  launch_routing_sums(ctx, sums, ProbSource{probs.data<float>(), nullptr, false, r.num_groups}, r, i0, i1);
}

void routing_sums_logits(Ctx& ctx, Tensor& sums, const Tensor& logits, ScoreFn fn, const Route& r) {
  launch_routing_sums(ctx, sums, ProbSource{nullptr, logits.data<float>(), fn == ScoreFn::softmax, r.num_groups}, r,
                      0, r.num_items);
}

// dprobs[i, g] += d[g] for every row.
static __global__ void add_to_columns(float* dprobs, const float* d, int64_t N, int64_t G) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < N * G;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dprobs[t] += d[t % G];
}

// One block: d[g] = alpha G f_g / N and value = alpha G sum_g f_g P_g from the
// routing sums (ops/router_loss.cc's layout), the CPU's expressions. fp (G)
// scratch for the in-order sum.
static __global__ void balance_from_sums(float* d, double* fp, double* value, const double* sums, int64_t G,
                                         int64_t N, float alpha) {
  const double assigned = sums[4 * G], items = sums[4 * G + 1];
  const float aG = alpha * static_cast<float>(G);
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    const double f = sums[g] / fmax(1.0, assigned), P = sums[G + g] / fmax(1.0, items);
    fp[g] = f * P;
    d[g] = static_cast<float>(static_cast<double>(aG) * f / N);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int64_t g = 0; g < G; ++g) s += fp[g];
    value[0] = static_cast<float>(static_cast<double>(aG) * s);
  }
}

void load_balance_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& sums, float alpha) {
  // (without dprobs: the value only, N unused)
  const int64_t N = dprobs.defined() ? dprobs.dim(0) : 1, G = (sums.numel() - kTail) / 4;
  if (alpha == 0.f || N == 0) {
    CUDA_CHECK(cudaMemsetAsync(value.raw(), 0, sizeof(double), stream(ctx)));
    return;
  }
  Tensor d = Tensor::empty({G}, DType::f32, ctx);
  Tensor fp = Tensor::empty({G}, DType::f64, ctx);
  balance_from_sums<<<1, kBlock, 0, stream(ctx)>>>(d.data<float>(), fp.data<double>(), value.data<double>(),
                                                   sums.data<double>(), G, N, alpha);
  CUDA_CHECK(cudaGetLastError());
  if (!dprobs.defined()) return;
  add_to_columns<<<grid_stride(N * G), kBlock, 0, stream(ctx)>>>(dprobs.data<float>(), d.data<float>(), N, G);
  CUDA_CHECK(cudaGetLastError());
}

// value = (float)(mul * (x[0] + ... + x[n-1]) / div), the sum in order (one thread).
static __global__ void ordered_value(double* value, const double* x, int64_t n, double mul, double div) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  value[0] = static_cast<float>(mul * s / div);
}

// Block s: items [s*len, (s+1)*len). fp_terms (S, G) scratch; fp (S) out.
static __global__ void balance_runs(float* dprobs, double* fp_terms, double* fp, const float* probs,
                                    const int32_t* group, int64_t N, int64_t k, int64_t G, int64_t len, float alpha) {
  __shared__ double assigned;
  const int64_t s = blockIdx.x, i0 = s * len, i1 = i0 + len;
  if (threadIdx.x == 0) {
    double n = 0;
    for (int64_t a = i0 * k; a < i1 * k; ++a) n += group[a] >= 0;
    assigned = n;
  }
  __syncthreads();
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    double chosen = 0, prob = 0;
    for (int64_t a = i0 * k; a < i1 * k; ++a) chosen += group[a] == g;
    for (int64_t i = i0; i < i1; ++i) prob += probs[i * G + g];
    const double f = chosen / fmax(1.0, assigned), P = prob / fmax(1.0, static_cast<double>(len));
    fp_terms[s * G + g] = f * P;
    const float d = static_cast<float>(static_cast<double>(alpha * static_cast<float>(G)) * f / N);
    for (int64_t i = i0; i < i1; ++i) dprobs[i * G + g] += d;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int64_t g = 0; g < G; ++g) sum += fp_terms[s * G + g];
    fp[s] = sum;
  }
}

void load_balance_loss_grouped(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const Route& r,
                               int64_t group, float alpha) {
  const int64_t N = r.num_items, G = r.num_groups;
  if (alpha == 0.f || N == 0) {
    CUDA_CHECK(cudaMemsetAsync(value.raw(), 0, sizeof(double), stream(ctx)));
    return;
  }
  const int64_t S = N / group;
  Tensor terms = Tensor::empty({S * G}, DType::f64, ctx);
  Tensor fp = Tensor::empty({S}, DType::f64, ctx);
  balance_runs<<<static_cast<unsigned>(S), kBlock, 0, stream(ctx)>>>(dprobs.data<float>(), terms.data<double>(),
                                                                     fp.data<double>(), probs.data<float>(),
                                                                     r.group.data<int32_t>(), N, r.k, G, group, alpha);
  CUDA_CHECK(cudaGetLastError());
  // The CPU's alpha * G * loss / S: alpha * G is a float product there too.
  ordered_value<<<1, 1, 0, stream(ctx)>>>(value.data<double>(), fp.data<double>(), S,
                                          static_cast<double>(alpha * static_cast<float>(G)), static_cast<double>(S));
  CUDA_CHECK(cudaGetLastError());
}

static __global__ void z_loss_rows(float* dlogits, double* lse2, const float* logits, int64_t N, int64_t G,
                                   float beta) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= N) return;
  const float* l = logits + i * G;
  float mx = -INFINITY;
  for (int64_t g = lane; g < G; g += 32) mx = fmaxf(mx, l[g]);
  mx = warp_max(mx);
  double s = 0;
  for (int64_t g = lane; g < G; g += 32) s += expf(l[g] - mx);
  s = warp_sum(s);
  const double lse = mx + log(s);
  if (lane == 0) lse2[i] = lse * lse;
  if (!dlogits) return;  // the value only
  float* dl = dlogits + i * G;
  for (int64_t g = lane; g < G; g += 32) dl[g] += static_cast<float>(2.0 * beta * lse * exp(l[g] - lse) / N);
}

void z_loss(Ctx& ctx, Tensor& dlogits, Tensor& value, const Tensor& logits, float beta) {
  const int64_t N = logits.dim(0), G = logits.dim(1);
  if (beta == 0.f || N == 0) {
    CUDA_CHECK(cudaMemsetAsync(value.raw(), 0, sizeof(double), stream(ctx)));
    return;
  }
  Tensor lse2 = Tensor::empty({N}, DType::f64, ctx);
  z_loss_rows<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(dlogits.defined() ? dlogits.data<float>() : nullptr,
                                                               lse2.data<double>(),
                                                               logits.data<float>(), N, G, beta);
  CUDA_CHECK(cudaGetLastError());
  Tensor total = Tensor::empty({1}, DType::f64, ctx);
  sum_f64(ctx, lse2.data<double>(), N, total.data<double>());
  ordered_value<<<1, 1, 0, stream(ctx)>>>(value.data<double>(), total.data<double>(), 1, static_cast<double>(beta),
                                          static_cast<double>(N));
  CUDA_CHECK(cudaGetLastError());
}

// row[i] = sum_g p[i, g] c_g (group order); cost null: all ones.
static __global__ void cost_rows(double* row, const float* probs, const float* cost, int64_t N, int64_t G) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  double s = 0;
  for (int64_t g = 0; g < G; ++g) s += probs[i * G + g] * (cost ? cost[g] : 1.f);
  row[i] = s;
}

static __global__ void budget_gradient(float* dprobs, const float* cost, int64_t N, int64_t G, float lambda,
                                       const double* C, float budget) {
  if (*C <= budget) return;  // the CPU's test, also for a NaN C (which gets the gradient there too)
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < N * G;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dprobs[t] += lambda * (cost ? cost[t % G] : 1.f) / static_cast<float>(N);
}

// value = (L_b, C), each rounded to f32 as on the CPU.
static __global__ void budget_value(double* value, const double* C, float budget, float lambda) {
  const double c = *C;
  value[0] = lambda == 0.f || c <= budget ? 0.f : static_cast<float>(lambda * (c - budget));
  value[1] = static_cast<float>(c);
}

void budget_loss(Ctx& ctx, Tensor& dprobs, Tensor& value, const Tensor& probs, const std::vector<float>& cost,
                 float budget, float lambda) {
  const int64_t N = probs.dim(0), G = probs.dim(1);
  const Tensor c = cost.empty() ? Tensor() : upload(ctx, cost);
  const float* cp = cost.empty() ? nullptr : c.data<float>();
  Tensor C = Tensor::empty({1}, DType::f64, ctx);
  Tensor rows = Tensor::empty({std::max<int64_t>(1, N)}, DType::f64, ctx);
  if (N > 0) {
    cost_rows<<<grid_for(N), kBlock, 0, stream(ctx)>>>(rows.data<double>(), probs.data<float>(), cp, N, G);
    CUDA_CHECK(cudaGetLastError());
  }
  sum_f64(ctx, rows.data<double>(), N, C.data<double>(), static_cast<double>(std::max<int64_t>(1, N)));
  if (lambda != 0.f && N * G > 0) {
    budget_gradient<<<grid_stride(N * G), kBlock, 0, stream(ctx)>>>(dprobs.data<float>(), cp, N, G, lambda,
                                                                     C.data<double>(), budget);
    CUDA_CHECK(cudaGetLastError());
  }
  budget_value<<<1, 1, 0, stream(ctx)>>>(value.data<double>(), C.data<double>(), budget, lambda);
  CUDA_CHECK(cudaGetLastError());
}

// One thread per item: its kept assignments' gradient (distinct groups per
// item: no two threads write one element) and its surrogate term.
// With R (device), active is R > B there, read by every thread.
static __global__ void realized_budget_rows(float* dprobs, double* row, const float* probs, const int32_t* group,
                                            const int32_t* slot, const float* cost, int64_t N, int64_t k, int64_t G,
                                            bool count_drops, bool active, float lambda, const double* R,
                                            float budget) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  if (R) active = lambda != 0.f && *R > budget;
  double s = 0;
  for (int64_t a = i * k; a < (i + 1) * k; ++a) {
    const int32_t g = group[a];
    if (g < 0 || !(slot[a] >= 0 || (count_drops && slot[a] == -2))) continue;
    // (rounded apart, as the CPU's: a fused multiply-add would differ in the last bit)
    s = __dadd_rn(s, __dmul_rn(static_cast<double>(probs[i * G + g]), cost[g]));
    if (active) dprobs[i * G + g] += lambda * cost[g] / static_cast<float>(N);
  }
  row[i] = s;
}

// One thread: R = sum_g (kept_g [+ cut_g]) c_g / max(1, items) from the
// routing sums (RoutingTotals' order), and, after the rows, the value.
static __global__ void realized_cost(double* R, const double* sums, const float* cost, int64_t G, bool with_cut) {
  double s = 0;
  for (int64_t g = 0; g < G; ++g)  // (no fused multiply-add: the CPU's bits, so R > budget ties alike)
    s = __dadd_rn(s, __dmul_rn(with_cut ? sums[2 * G + g] + sums[3 * G + g] : sums[2 * G + g], cost[g]));
  R[0] = s / fmax(1.0, sums[4 * G + 1]);
}

static __global__ void realized_value(double* value, const double* R, float budget, float lambda, bool any) {
  const double r = *R;
  value[0] = any && lambda != 0.f && r > budget ? static_cast<float>(lambda * (r - budget)) : 0.f;
}

float realized_budget_loss(Ctx& ctx, Tensor& dprobs, const Tensor& probs, const Route& r,
                           const RealizedBudgetArgs& a) {
  const int64_t N = r.num_items;
  const Tensor c = upload(ctx, a.cost);
  Tensor R;
  if (a.sums) {
    R = Tensor::empty({1}, DType::f64, ctx);
    realized_cost<<<1, 1, 0, stream(ctx)>>>(R.data<double>(), a.sums->data<double>(), c.data<float>(), r.num_groups,
                                            a.count_budget_drops);
    CUDA_CHECK(cudaGetLastError());
  }
  const bool active = !a.sums && a.lambda != 0.f && a.realized > a.budget && N > 0;
  if (N > 0 && (active || a.sums || a.surrogate)) {
    Tensor rows = Tensor::empty({N}, DType::f64, ctx);
    realized_budget_rows<<<grid_for(N), kBlock, 0, stream(ctx)>>>(
        dprobs.data<float>(), rows.data<double>(), probs.data<float>(), r.group.data<int32_t>(),
        r.slot.data<int32_t>(), c.data<float>(), N, r.k, r.num_groups, a.count_budget_drops, active, a.lambda,
        a.sums ? R.data<double>() : nullptr, a.budget);
    CUDA_CHECK(cudaGetLastError());
    if (a.surrogate) *a.surrogate = sum_f64_to_host(ctx, rows.data<double>(), N) / N;
  } else if (a.surrogate) {
    *a.surrogate = 0;
  }
  if (a.sums) {
    realized_value<<<1, 1, 0, stream(ctx)>>>(a.value->data<double>(), R.data<double>(), a.budget, a.lambda, N > 0);
    CUDA_CHECK(cudaGetLastError());
    return 0.f;
  }
  return active ? static_cast<float>(a.lambda * (a.realized - a.budget)) : 0.f;
}

// ---- router_backward ------------------------------------------------------
//
// Up to 128 groups and k <= 8: a row in registers (ops/cuda/router_rows.cuh,
// L lanes a row), one read of the logits and the route, one write of dlogits.
// The softmax is router_scores' (row_exp, then the division: the gating's bits),
// the z-loss term z_loss_rows' (the sum and lse in double); the
// picks' probabilities come from their lanes by a shuffle. The terms are
// added in the CPU sequence's order: dp = a_g, then the weights' term; dl =
// z, then p (dp - <p, dp>) (or p (1 - p) dp). Otherwise the sequence itself
// on the device (scratch probabilities and gradients).
namespace {
struct RouterRows {
  float* dlogits;
  const float* logits;
  const int32_t* group;
  const float* dweight;
  const float* lb;  // (G) alpha G f_g / N, or null
  int64_t N;
  int G, k;
  bool softmax, renormalized;
  float beta;
  bool vec;
};
constexpr int kMaxPicks = 8;
}  // namespace

template <int L, int NV>
static __global__ void router_backward_rows(RouterRows a) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(rows_per_block<L>()) + threadIdx.x / L;
  const bool valid = row < a.N;
  const int64_t i = valid ? row : 0;
  const int sub = threadIdx.x % L, g0 = sub * NV, first_lane = threadIdx.x % 32 - sub;
  float l[NV], e[NV], p[NV], dp[NV];
  load_row<NV>(l, a.logits + i * a.G, a.G, sub, valid, a.vec);
  float mx, s;
#pragma unroll
  for (int j = 0; j < NV; ++j) e[j] = l[j];  // (0 past G: load_row's)
  row_exp<L, NV>(e, a.G, sub, mx, s);  // the softmax for either score (the z-loss's)
#pragma unroll
  for (int j = 0; j < NV; ++j) p[j] = a.softmax ? e[j] / s : 1.f / (1.f + expf(-l[j]));
  if (a.lb)
    load_row<NV>(dp, a.lb, a.G, sub, true, a.vec);
  else
#pragma unroll
    for (int j = 0; j < NV; ++j) dp[j] = 0.f;

  // The combine weights' term (route_weights_backward's arithmetic).
  int g[kMaxPicks];
  float dw[kMaxPicks], pr[kMaxPicks];
  float S = 0.f, dot = 0.f;
#pragma unroll
  for (int r = 0; r < kMaxPicks; ++r) {
    if (r >= a.k) break;  // (k is the same for every lane: the shuffles below stay converged)
    g[r] = a.group[i * a.k + r];
    dw[r] = a.dweight[i * a.k + r];
    float mine = 0.f;
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (g0 + j == g[r]) mine = p[j];
    pr[r] = __shfl_sync(0xffffffffu, mine, first_lane + (g[r] >= 0 ? g[r] / NV : 0));
    if (g[r] >= 0) S += pr[r], dot = __fadd_rn(dot, __fmul_rn(dw[r], pr[r]));  // (no FMA, as there)
  }
  if (!a.renormalized || !(S <= 0.f)) {  // (a NaN S passes its NaN on, as there)
#pragma unroll
    for (int r = 0; r < kMaxPicks; ++r) {
      if (r >= a.k) break;
      if (g[r] < 0) continue;
      const float t = a.renormalized ? dw[r] / S - dot / (S * S) : dw[r];
#pragma unroll
      for (int j = 0; j < NV; ++j)
        if (g0 + j == g[r]) dp[j] += t;
    }
  }

  // z-loss (z_loss_rows' arithmetic), then the scores' Jacobian.
  float dl[NV];
  double lse = 0;
  if (a.beta != 0.f) {
    double sd = 0;
#pragma unroll
    for (int j = 0; j < NV; ++j) sd += e[j];
    sd = warp_sum<double, L>(sd);
    lse = mx + log(sd);
  }
#pragma unroll
  for (int j = 0; j < NV; ++j)
    dl[j] = a.beta != 0.f ? static_cast<float>(2.0 * a.beta * lse * exp(l[j] - lse) / a.N) : 0.f;
  if (a.softmax) {
    float pdp = 0.f;
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (g0 + j < a.G) pdp += p[j] * dp[j];
    pdp = warp_sum<float, L>(pdp);
#pragma unroll
    for (int j = 0; j < NV; ++j) dl[j] += p[j] * (dp[j] - pdp);
  } else {
#pragma unroll
    for (int j = 0; j < NV; ++j) dl[j] += p[j] * (1.f - p[j]) * dp[j];
  }
  if (valid) store_row<NV>(a.dlogits + i * a.G, dl, a.G, sub, a.vec);
}

void router_backward(Ctx& ctx, Tensor& dlogits, const RouterBackwardArgs& a) {
  const Route& r = a.route;
  const int64_t N = r.num_items, G = r.num_groups;
  if (N * G == 0) return;
  Tensor lb, scratch_fp, scratch_value;
  if (a.alpha != 0.f) {
    lb = Tensor::empty({G}, DType::f32, ctx);
    scratch_fp = Tensor::empty({G}, DType::f64, ctx);
    scratch_value = Tensor::empty({1}, DType::f64, ctx);
    balance_from_sums<<<1, kBlock, 0, stream(ctx)>>>(lb.data<float>(), scratch_fp.data<double>(),
                                                     scratch_value.data<double>(), a.sums->data<double>(), G, N,
                                                     a.alpha);
    CUDA_CHECK(cudaGetLastError());
  }
  if (G <= 128 && r.k <= kMaxPicks) {
    RouterRows rows{dlogits.data<float>(),
                    a.logits.data<float>(),
                    r.group.data<int32_t>(),
                    a.dweight.data<float>(),
                    lb.defined() ? lb.data<float>() : nullptr,
                    N,
                    static_cast<int>(G),
                    static_cast<int>(r.k),
                    a.fn == ScoreFn::softmax,
                    a.renormalized,
                    a.beta,
                    false};
    rows.vec = row_vec(G, {rows.dlogits, rows.logits, rows.lb});
    with_row_layout(G, [&](auto L, auto NV) {
      constexpr int kL = decltype(L)::value, kNV = decltype(NV)::value;
      router_backward_rows<kL, kNV><<<grid_for(N, rows_per_block<kL>()), kBlock, 0, stream(ctx)>>>(rows);
    });
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  // The sequence of ops/router_loss.h.
  Tensor probs = Tensor::empty({N, G}, DType::f32, ctx), dprobs = Tensor::zeros({N, G}, DType::f32, ctx);
  cuda::router_scores(ctx, probs, a.logits, a.fn);
  if (a.alpha != 0.f)
    add_to_columns<<<grid_stride(N * G), kBlock, 0, stream(ctx)>>>(dprobs.data<float>(), lb.data<float>(), N, G);
  CUDA_CHECK(cudaGetLastError());
  cuda::route_weights_backward(ctx, dprobs, a.dweight, probs, r, a.renormalized);
  dlogits.zero(ctx);
  if (a.beta != 0.f) {
    Tensor value = Tensor::empty({1}, DType::f64, ctx);
    cuda::z_loss(ctx, dlogits, value, a.logits, a.beta);
  }
  cuda::router_scores_backward(ctx, dlogits, dprobs, probs, a.fn);
}

}  // namespace sy::ops::cuda
