// Routed attention on CUDA (ops/routed_attention.h): cluster assignment,
// centroid upkeep, and the attention over the clusters (forward and
// backward: ops/cuda/routed_attention_rows.h; launches at the end of this
// file). k-means initialisation, once per run, runs the CPU reference on a
// host copy.
//
// assign_clusters:  balanced mode: scores (T, K) = xn mu^T by one cuBLASLt
//   GEMM (gemm.h), then the routing core's CUDA groups_choose (each
//   centroid's top S = ceil(T/K)). Causal mode (top-1, slots by position):
//   nearest_clusters below, one kernel to each row's nearest centroid, then
//   tokens_choose's slot steps (routing_steps.h). The same Route as the CPU
//   for the same scores: the GEMM and the exact scores add in another order
//   than the CPU's, so decisions agree where the scores are separated by more
//   than that rounding (the tests use gaps >= 1e-3).
// members:  a Route's group-major buffer inverted, row -> (item, group), for
//   the heads an op was asked for only (one stretch of the buffer; a layer
//   calls once per centroid set): each kept assignment writes its own row
//   (offset[g] + slot), so no two threads write one place. A cluster's rows
//   are its members in position order.
// accumulate_cluster_stats:  one block per cluster; thread d walks the
//   cluster's query rows, then (when the key list differs) its key rows, in
//   row order, adding into sum[c, d] - the CPU's additions in the CPU's order,
//   so the sums are bitwise the reference's (stacked heads: cluster c of
//   each head in turn). The count is the CPU's loop of += 1 on one thread.
// ema_update:  one block per centroid: n, s by the CPU's expressions
//   (__fmul_rn/__fadd_rn: no FMA contraction), |s|^2 and the drift by a
//   fixed block tree in double, the mean drift by sum_f64_to_host.
// commitment_sums:  one warp per query row of those heads,
//   |qn - mu|^2 / D in double by a fixed butterfly,
//   summed over rows by sum_f64_to_host (fixed order).
// commitment_backward:  one thread per element of dqn, adding the query's
//   clusters in ascending order (its assignments in index order: k = 1, or
//   the groups-choose layout a = t*K + c), as the CPU's cluster loop does.
// routed_attention_forward / backward, at the head dims of the tiled flash
//   kernels (f32 16, 32, 64, 128; bf16 64, 128), either mode: one varlen
//   segment per cluster (attention_varlen.h), the cluster's keys, then its
//   queries - the routes' buffers side by side, no sort - with positions and
//   the first-shared rule in the mask, and an LSE merge of a token's rows in
//   cluster order (ops/cuda/routed_union_pack.h). (Causal mode once packed a
//   cluster as the union of its queries and keys in position order, a row
//   both where a token's two clusters agree: (|Q|+|K|-both)^2 / 2 of tile
//   area against |Q||K| / 2 for keys then queries, never less, and 4x more
//   where the clusters of q and k disagree - as on random heads - and it
//   needed a radix sort.) The backward reuses the forward's packing, packed
//   q, k, v and pair counts where the caller hands them on (RoutedSaved).
//   Other head dims (up to 512; past it refused): one warp per query row or
//   key row, one thread per query or output element, in the order of the
//   rows header. The key sets, where wanted,
//   are sorted by a radix sort on (query, key) when a query can be in
//   several clusters; their offsets come from a scan on the host (the one
//   copy back; without key sets, the pair count is that copy).
// No atomics anywhere: two runs give the same bits.
#include <cuda_bf16.h>

#include "ops/cuda/attention_varlen.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cub_ops.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/packed_gather.cuh"
#include "ops/cuda/routed_attention_rows.h"
#include "ops/cuda/packed_rows.h"
#include "ops/cuda/routed_union_pack.h"
#include "ops/cuda/routing_steps.h"
#include "ops/routed_attention.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <memory>
#include <string>

namespace sy::ops::cuda {

namespace {
constexpr int kWarps = kBlock / 32;  // rows per block in the warp-per-row kernel
constexpr int kRowBlock = 128;       // threads of the per-cluster kernels (a power of two: block_sum)

}  // namespace

// s (T, K) = xn (T, D) . mu^T, mu stored (K, D); s may be rows of a larger tensor.
void centroid_scores(Ctx& ctx, Tensor& s, const Tensor& xn, const Centroids& c) {
  const int64_t T = xn.dim(0);
  if (T == 0) return;
  GemmArgs g;
  g.trans_b = true;
  g.M = T, g.N = c.K, g.K = c.D;
  g.A = xn.data<float>(), g.lda = c.D;
  g.B = c.mu.data<float>(), g.ldb = c.D;
  g.C = s.data<float>(), g.ldc = c.K;
  gemm(ctx, g);
}

// ---- nearest_clusters -------------------------------------------------------
//
// Causal mode's choice without the scores tensor (at 64k tokens x 8 heads and
// 256 clusters it would be 512 MiB written by the GEMM and read back by the
// top-k, for one int per row). A block owns 64 rows of one centroid set and
// walks the centroids in chunks of 64:
//   s~ = x . mu_c by mma in split bf16 (fp32 accumulate): x = xh + xl with
//   xh = bf16(x), xl = bf16(x - xh), mu likewise, and
//       s~ = xh.mh + xh.ml + xl.mh        (three mma passes; xl.ml dropped).
//   Its error against the exact dot product is at most ~3 u^2 |x||mu_c|
//   = 2^-14.4 |x||mu_c| (u = 2^-8, bf16's unit roundoff: the two dropped
//   residuals, each |r| <= u^2 |x| elementwise, and xl.ml) plus the tensor
//   cores' fp32 accumulation of 3 D exact products, at most ~3 D 2^-23
//   |x||mu_c| even where they truncate (2^-14.4 at D = 128, 2^-15.4 at 64);
//   the exact score's own fp32 rounding (routed::centroid_dot's four sums:
//   (D / 4 + 2) 2^-24 |x||mu_c|) adds 2^-18.9 at most. eps_c = 2^-12
//   |x||mu_c| covers the sum, 2^-13.3 at D = 128 in the worst case, 2.5
//   times over (more at smaller D; a host emulation of the
//   near-tie test's inputs, fp32 sums in order, saw at most 3.1e-6
//   |x||mu_c|, 1/80 of eps);
//   L = max over the centroids so far of s~ - eps (below the best exact score),
//   and every centroid with s~ + eps >= L is a candidate: its score computed
//   exactly in fp32 from the fp32 rows, the best kept (ties: lower index).
// The true nearest is always a candidate when its chunk is scored, and a
// candidate that later falls below L scores under the one that set L, so the
// choice is the fp32 argmax: the CPU's decision, up to the order of its
// additions (as the GEMM path). Its score is the route's weight.
// (The first version used plain bf16 with eps = 2^-6 |x||mu|: at 64k x 8
// heads and 256 clusters about 6 centroids a row fell within the margin,
// each rescored by a 64-step serial dot product on one lane, and the kernel
// took most of the selection's 9.1 ms on an H200. The split costs two more
// mma passes; the margin, 64 times tighter, leaves about one candidate a
// row per chunk where the running best improves, ~2 a row in all at K 256.
// A rescore runs on one lane while its warp waits: one chain of D dependent
// FMAs until 2026-12-06, four chains of D / 4 since (centroid_dot).)

namespace {
constexpr int kNcWarps = 4, kNcRows = 16 * kNcWarps, kNcChunk = 64;

// Dynamic shared memory of nearest_centroid_kernel<D>: x's rows and a chunk
// of centroids, each split in two bf16 tiles, at mma.cuh's padded pitch.
constexpr size_t nearest_smem_bytes(int D) {
  return static_cast<size_t>(2 * kNcRows + 2 * kNcChunk) * (D + 8) * sizeof(__nv_bfloat16);
}

// Every centroid set in one launch: set s's rows are x's rows
// [s per_set, (s + 1) per_set), its centroids CentroidSets' mu[s] and the
// prep kernel's bf16 splits and norms at s K D (s K); a block's rows never
// straddle two sets.
struct NearestArgs {
  const float* x;                 // (sets * per_set, D)
  const __nv_bfloat16* mu_hi;     // (sets, K, D) bf16(mu)
  const __nv_bfloat16* mu_lo;     // (sets, K, D) bf16(mu - bf16(mu))
  const float* mu;                // (K, D): this block's set's (set by the kernel)
  const float* mu_norm;           // (sets, K) |mu_c|
  int64_t per_set, blocks_per_set, T, K;  // T rows per head
  int64_t first_row;              // the stack's row of x's first row (the launch's first set)
  int32_t* group;                 // (N) head * K + c
  float* weight;                  // (N) the exact score
  float* top;                     // (N)
};

// The sets' centroids, as pointers: at most kMaxSets a launch.
constexpr int kMaxSets = 64;
struct CentroidSets {
  const float* mu[kMaxSets];
};
}  // namespace

// One warp per centroid of every set (warp w: set w / K, centroid w % K):
// bf16(mu_c) split in two, and |mu_c| (a
// butterfly over the lanes: only the candidates' margins read it, and eps
// covers its rounding). One launch for all sets, where one thread per
// centroid, a launch per set, walked D serially.
static __global__ void centroid_prep_kernel(CentroidSets sets, int64_t n_sets, int64_t K, int64_t D,
                                            __nv_bfloat16* mu_hi, __nv_bfloat16* mu_lo, float* norm) {
  const int64_t w = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= n_sets * K) return;  // (the whole warp)
  const float* mu = sets.mu[w / K] + (w % K) * D;
  float s = 0.f;
  for (int64_t d = lane; d < D; d += 32) {
    const float v = mu[d];
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    mu_hi[w * D + d] = hi;
    mu_lo[w * D + d] = __float2bfloat16_rn(v - __bfloat162float(hi));
    s = fmaf(v, v, s);
  }
  s = warp_sum(s);
  if (lane == 0) norm[w] = sqrtf(s);
}

template <int D>
static __global__ void __launch_bounds__(kNcWarps * 32) nearest_centroid_kernel(NearestArgs args, CentroidSets sets) {
  constexpr int LD = D + 8;  // mma.cuh's padded pitch
  constexpr float kEps = 1.f / 4096.f;
  // This block's set: its rows, its centroids (the rest reads one set's view).
  const int64_t set = blockIdx.x / args.blocks_per_set, K = args.K;
  NearestArgs a = args;
  a.x += set * a.per_set * D;
  a.mu_hi += set * K * D, a.mu_lo += set * K * D, a.mu = sets.mu[set], a.mu_norm += set * K;
  const int64_t row0 = a.first_row + set * a.per_set, rows = a.per_set;  // row0: the set's first row of the stack
  extern __shared__ __align__(16) unsigned char nc_smem[];
  __nv_bfloat16* const sx_hi = reinterpret_cast<__nv_bfloat16*>(nc_smem);
  __nv_bfloat16* const sx_lo = sx_hi + kNcRows * LD;
  __nv_bfloat16* const smu_hi = sx_lo + kNcRows * LD;
  __nv_bfloat16* const smu_lo = smu_hi + kNcChunk * LD;
  __shared__ float sxn[kNcRows], snorm[kNcChunk];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int64_t r0 = (blockIdx.x % a.blocks_per_set) * kNcRows;
  for (int i = threadIdx.x; i < kNcRows * D / 2; i += blockDim.x) {  // the rows, split (past the set: 0)
    const int r = i / (D / 2), col = (i % (D / 2)) * 2;
    const int64_t gr = r0 + r;
    const float2 v = gr < rows ? *reinterpret_cast<const float2*>(a.x + gr * D + col) : make_float2(0.f, 0.f);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(v.x, v.y);
    const float2 back = __bfloat1622float2(hi);
    *reinterpret_cast<__nv_bfloat162*>(sx_hi + r * LD + col) = hi;
    *reinterpret_cast<__nv_bfloat162*>(sx_lo + r * LD + col) = __floats2bfloat162_rn(v.x - back.x, v.y - back.y);
  }
  if (threadIdx.x < kNcRows) {
    const int64_t gr = r0 + threadIdx.x;
    sxn[threadIdx.x] = gr < rows ? sqrtf(routed::centroid_dot<D>(a.x + gr * D, a.x + gr * D)) : 0.f;
  }
  const int lr[2] = {warp * 16 + gid, warp * 16 + gid + 8};  // this thread's rows of the C fragments
  float L[2] = {-INFINITY, -INFINITY}, best[2] = {-INFINITY, -INFINITY};
  int bc[2] = {-1, -1};
  for (int64_t c0 = 0; c0 < a.K; c0 += kNcChunk) {
    __syncthreads();  // the rows are in; the last chunk's readers are done
    for (int i = threadIdx.x; i < kNcChunk * D / 8; i += blockDim.x) {  // 16 bytes each
      const int c = i / (D / 8), col = (i % (D / 8)) * 8;
      uint4 hi = make_uint4(0, 0, 0, 0), lo = hi;
      if (c0 + c < a.K) {
        hi = *reinterpret_cast<const uint4*>(a.mu_hi + (c0 + c) * D + col);
        lo = *reinterpret_cast<const uint4*>(a.mu_lo + (c0 + c) * D + col);
      }
      *reinterpret_cast<uint4*>(smu_hi + c * LD + col) = hi;
      *reinterpret_cast<uint4*>(smu_lo + c * LD + col) = lo;
    }
    if (threadIdx.x < kNcChunk) snorm[threadIdx.x] = c0 + threadIdx.x < a.K ? a.mu_norm[c0 + threadIdx.x] : 0.f;
    __syncthreads();
    float acc[1][kNcChunk / 8][4];
#pragma unroll
    for (int j = 0; j < kNcChunk / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[0][j][e] = 0.f;
    // The small terms first, then the large (their sum's rounding is the
    // accumulation's; either order is within eps).
    mma::gemm_abt<1, kNcChunk, D, LD>(acc, sx_hi, warp * 16, smu_lo, lane);
    mma::gemm_abt<1, kNcChunk, D, LD>(acc, sx_lo, warp * 16, smu_hi, lane);
    mma::gemm_abt<1, kNcChunk, D, LD>(acc, sx_hi, warp * 16, smu_hi, lane);
    // C fragment (j, e): row lr[e / 2], centroid c0 + 8 j + 2 tig + e % 2.
    float l[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < kNcChunk / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * tig + e % 2;
        if (c0 + col < a.K) l[e / 2] = fmaxf(l[e / 2], acc[0][j][e] - kEps * sxn[lr[e / 2]] * snorm[col]);
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // the row's lower bound over its quad, then over the chunks
      l[h] = fmaxf(l[h], __shfl_xor_sync(0xffffffffu, l[h], 1));
      l[h] = fmaxf(l[h], __shfl_xor_sync(0xffffffffu, l[h], 2));
      L[h] = fmaxf(L[h], l[h]);
    }
#pragma unroll
    for (int j = 0; j < kNcChunk / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2, col = 8 * j + 2 * tig + e % 2;
        const int64_t gr = r0 + lr[h], c = c0 + col;
        if (c >= a.K || gr >= rows || sxn[lr[h]] == 0.f || acc[0][j][e] + kEps * sxn[lr[h]] * snorm[col] < L[h])
          continue;
        const float s = routed::centroid_dot<D>(a.x + gr * D, a.mu + c * D);
        if (bc[h] < 0 || s > best[h] || (s == best[h] && c < bc[h])) best[h] = s, bc[h] = static_cast<int>(c);
      }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int m = 1; m <= 2; m *= 2) {  // the quad's best (score descending, index ascending)
      const float ob = __shfl_xor_sync(0xffffffffu, best[h], m);
      const int oc = __shfl_xor_sync(0xffffffffu, bc[h], m);
      if (oc >= 0 && (bc[h] < 0 || ob > best[h] || (ob == best[h] && oc < bc[h]))) best[h] = ob, bc[h] = oc;
    }
    // A zero row (a constant row layer-normed) scores exactly 0 against
    // every centroid: the lowest index, without rescoring all K (eps is 0).
    if (sxn[lr[h]] == 0.f) best[h] = 0.f, bc[h] = 0;
    const int64_t gr = r0 + lr[h];
    if (tig == 0 && gr < rows) {
      const int64_t g = row0 + gr;  // the stack's row
      a.group[g] = static_cast<int32_t>(g / a.T * a.K + (bc[h] < 0 ? 0 : bc[h]));  // (no candidate: NaN rows)
      a.weight[g] = a.top[g] = best[h];
    }
  }
}

// D = 128 needs more than the 48 KiB of static shared memory (68 KiB):
// the kernel's limit is raised once (smem depends on D alone).
template <int D>
static void launch_nearest(Ctx& ctx, unsigned grid, size_t smem, const NearestArgs& a, const CentroidSets& sets) {
  allow_smem<nearest_centroid_kernel<D>>(smem);
  nearest_centroid_kernel<D><<<grid, kNcWarps * 32, smem, stream(ctx)>>>(a, sets);
}

namespace {
// Whether the fused kernel takes this choice: top-1 on the scores alone (the
// raw score as weight: not renormalized), a head dim it has, rows it can
// read in pairs.
bool fused_nearest(const Tensor& xn, const TokensChooseParams& tp) {
  const int64_t D = xn.dim(1);
  return tp.k == 1 && !tp.renormalize && !tp.selection_bias && !tp.selection_keys &&
         (D == 16 || D == 32 || D == 64 || D == 128) &&
         reinterpret_cast<uintptr_t>(xn.raw()) % 8 == 0;
}
}  // namespace

void nearest_clusters(Ctx& ctx, Route& r, const Tensor& xn, const std::vector<const Centroids*>& sets,
                      const TokensChooseParams& tp) {
  if (!fused_nearest(xn, tp)) {
    cuda::tokens_choose(ctx, r, stacked_centroid_scores(ctx, xn, sets), tp);
    return;
  }
  const int64_t N = xn.dim(0), D = xn.dim(1), K = sets[0]->K, per_set = N / static_cast<int64_t>(sets.size());
  const int64_t T = tp.segment > 0 ? tp.segment : N;
  tokens_choose_by(ctx, r, N, K, tp, [&](int32_t* group, float* weight, float* top) {
    // (A part of the op's profile interval: the rest of it is the route's
    // sort, capacity and offsets, ops/cuda/routing.cu.)
    const OpScope part(ctx.profiler, "nearest-centroid kernel");
    const size_t smem = nearest_smem_bytes(static_cast<int>(D));
    const int64_t n_sets = static_cast<int64_t>(sets.size()), blocks_per_set = (per_set + kNcRows - 1) / kNcRows;
    // Up to kMaxSets sets a launch (a layer's heads: one launch), each
    // block's rows within one set.
    for (int64_t i0 = 0; i0 < n_sets && per_set > 0; i0 += kMaxSets) {
      const int64_t n = std::min<int64_t>(kMaxSets, n_sets - i0);
      CentroidSets cs{};
      for (int64_t i = 0; i < n; ++i) cs.mu[i] = sets[i0 + i]->mu.data<float>();
      Tensor norm = Tensor::empty({n * K}, DType::f32, ctx);
      Tensor mu_hi = Tensor::empty({n * K * D}, DType::bf16, ctx), mu_lo = Tensor::empty({n * K * D}, DType::bf16, ctx);
      centroid_prep_kernel<<<grid_for(n * K * 32), kBlock, 0, stream(ctx)>>>(
          cs, n, K, D, elems<Bf16>(mu_hi), elems<Bf16>(mu_lo), norm.data<float>());
      CUDA_CHECK(cudaGetLastError());
      const NearestArgs a{xn.data<float>() + i0 * per_set * D,
                          elems<Bf16>(mu_hi),
                          elems<Bf16>(mu_lo),
                          nullptr,
                          norm.data<float>(),
                          per_set,
                          blocks_per_set,
                          T,
                          K,
                          i0 * per_set,
                          group,
                          weight,
                          top};
      const unsigned grid = static_cast<unsigned>(n * blocks_per_set);
      switch (D) {
        case 16: launch_nearest<16>(ctx, grid, smem, a, cs); break;
        case 32: launch_nearest<32>(ctx, grid, smem, a, cs); break;
        case 64: launch_nearest<64>(ctx, grid, smem, a, cs); break;
        default: launch_nearest<128>(ctx, grid, smem, a, cs); break;
      }
      CUDA_CHECK(cudaGetLastError());
    }
  });
}

namespace {

// Rows [row0, row0 + rows) of a Route's buffer as (item, group), on the device.
struct Members {
  Tensor item, group;  // i32 (rows): entry i is buffer row row0 + i
  int64_t row0 = 0, rows = 0;
  const int32_t* items() const { return rows > 0 ? item.data<int32_t>() : nullptr; }
  const int32_t* groups() const { return rows > 0 ? group.data<int32_t>() : nullptr; }
};
}  // namespace

// Assignment a0 + i: its kept row (minus row0) as (item, group).
static __global__ void member_rows(const int32_t* group, const int32_t* slot, const int32_t* offset, int64_t a0,
                                   int64_t n, int64_t k, int64_t row0, int32_t* row_item, int32_t* row_group) {
  const int64_t a = a0 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (a >= a0 + n || slot[a] < 0) return;
  const int32_t g = group[a];
  const int64_t row = offset[g] + slot[a] - row0;
  row_item[row] = static_cast<int32_t>(a / k);
  row_group[row] = g;
}

namespace {
// The rows of the stacked heads h (their clusters' rows are one stretch of
// the group-major buffer, their tokens' assignments one stretch of the route):
// what the per-set ops read, not the whole route once per set.
Members members(Ctx& ctx, const Route& r, const Clusters& cl, HeadRange h) {
  const int64_t K = cl.per_head(), T = cl.head_len();
  Members m;
  m.row0 = r.host_offset[h.first * K];
  m.rows = r.host_offset[(h.first + h.count) * K] - m.row0;
  if (m.rows == 0) return m;
  m.item = Tensor::empty({m.rows}, DType::i32, ctx);
  m.group = Tensor::empty({m.rows}, DType::i32, ctx);
  const int64_t a0 = h.first * T * r.k, n = h.count * T * r.k;
  member_rows<<<grid_for(n), kBlock, 0, stream(ctx)>>>(r.group.data<int32_t>(), r.slot.data<int32_t>(),
                                                       r.offset.data<int32_t>(), a0, n, r.k, m.row0,
                                                       m.item.data<int32_t>(), m.group.data<int32_t>());
  CUDA_CHECK(cudaGetLastError());
  return m;
}
}  // namespace

// ---- accumulate_cluster_stats ---------------------------------------------

namespace {
struct StatsArgs {
  float* sum;    // (K, D)
  float* count;  // (K)
  int64_t K, first, heads;  // clusters per head; the stacked heads [first, first + heads)
  const float* qn;
  const float* kn;  // (T, D)
  const int32_t* q_offset;
  const int32_t* q_item;  // query route: offsets (K+1), buffer rows q_row0.. -> position
  const int32_t* k_offset;
  const int32_t* k_item;  // key route
  int64_t q_row0, k_row0, D;
};
}  // namespace

// Cluster g into stats row c.
static __device__ void cluster_stats_block(const StatsArgs& a, int64_t g, int64_t c) {
  // (rows relative to the heads' first: the Members the ops made)
  const int32_t q0 = a.q_offset[g] - a.q_row0, q1 = a.q_offset[g + 1] - a.q_row0, k0 = a.k_offset[g] - a.k_row0,
                k1 = a.k_offset[g + 1] - a.k_row0;
  // The CPU adds the keys only where the key list differs from the query list.
  bool same = q1 - q0 == k1 - k0;
  if (same) {  // uniform over the block: the barrier below is reached by all or none
    bool mine = true;
    for (int32_t i = threadIdx.x; i < q1 - q0; i += blockDim.x) mine &= a.q_item[q0 + i] == a.k_item[k0 + i];
    same = __syncthreads_and(mine);
  }
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) {
    float acc = a.sum[c * a.D + d];
    for (int32_t r = q0; r < q1; ++r) acc += a.qn[a.q_item[r] * a.D + d];
    if (!same)
      for (int32_t r = k0; r < k1; ++r) acc += a.kn[a.k_item[r] * a.D + d];
    a.sum[c * a.D + d] = acc;
  }
  if (threadIdx.x == 0) {
    float n = a.count[c];
    const int32_t members = (q1 - q0) + (same ? 0 : k1 - k0);
    for (int32_t i = 0; i < members; ++i) n += 1.f;  // the CPU's count[c] += 1 (exact below 2^24)
    a.count[c] = n;
  }
}

// Block c: cluster c of every head in the range, heads in order (the CPU's
// order of additions into row c; thread d owns sum[c, d] throughout).
static __global__ void cluster_stats_kernel(StatsArgs a) {
  for (int64_t h = a.first; h < a.first + a.heads; ++h) cluster_stats_block(a, h * a.K + blockIdx.x, blockIdx.x);
}

void accumulate_cluster_stats(Ctx& ctx, ClusterStats& s, const Tensor& qn, const Tensor& kn, const Clusters& cl,
                              HeadRange heads) {
  const int64_t K = cl.per_head();
  if (K == 0 || heads.count == 0) return;
  const Members q = members(ctx, cl.queries, cl, heads), k = members(ctx, cl.keys, cl, heads);
  StatsArgs a{s.sum.data<float>(), s.count.data<float>(), K, heads.first, heads.count, qn.data<float>(),
              kn.data<float>(), cl.queries.offset.data<int32_t>(), q.items(), cl.keys.offset.data<int32_t>(),
              k.items(), q.row0, k.row0, qn.dim(1)};
  cluster_stats_kernel<<<static_cast<unsigned>(K), kRowBlock, 0, stream(ctx)>>>(a);
  CUDA_CHECK(cudaGetLastError());
}

// ---- ema_update -----------------------------------------------------------

namespace {
struct EmaArgs {
  float* mu;
  float* sum;    // (K, D)
  float* count;  // (K)
  const float* s_sum;
  const float* s_count;
  double* drift;  // (K) |mu_new - mu_old| per centroid
  int64_t D;
  float decay;
};
}  // namespace

static __global__ void ema_kernel(EmaArgs a) {
  __shared__ double scratch[kRowBlock];
  const int64_t k = blockIdx.x;
  const float keep = a.decay, take = 1.f - a.decay;
  if (threadIdx.x == 0) a.count[k] = __fadd_rn(__fmul_rn(keep, a.count[k]), __fmul_rn(take, a.s_count[k]));
  float* s = a.sum + k * a.D;
  float* mu = a.mu + k * a.D;
  double n = 0;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) {
    const float v = __fadd_rn(__fmul_rn(keep, s[d]), __fmul_rn(take, a.s_sum[k * a.D + d]));
    s[d] = v;
    n += static_cast<double>(v) * v;  // exact product of two floats: FMA or not, one rounding
  }
  n = block_sum(n, scratch);
  // mu = sqrt(D) s / |s|, as the CPU's rescale: a float factor, then a float product.
  const float f = n > 0 ? static_cast<float>(sqrt(static_cast<double>(a.D) / n)) : 1.f;
  double d2 = 0;
  for (int64_t d = threadIdx.x; d < a.D; d += blockDim.x) {
    const float old = mu[d], m = __fmul_rn(s[d], f);
    mu[d] = m;
    const float e = __fsub_rn(m, old);
    d2 += static_cast<double>(e) * e;
  }
  d2 = block_sum(d2, scratch);
  if (threadIdx.x == 0) a.drift[k] = sqrt(d2);
}

float ema_update(Ctx& ctx, Centroids& c, const ClusterStats& s, float decay) {
  if (c.K == 0) return 0.f;
  Tensor drift = Tensor::empty({c.K}, DType::f64, ctx);
  EmaArgs a{c.mu.data<float>(),   c.sum.data<float>(), c.count.data<float>(), s.sum.data<float>(),
            s.count.data<float>(), drift.data<double>(), c.D,                  decay};
  ema_kernel<<<static_cast<unsigned>(c.K), kRowBlock, 0, stream(ctx)>>>(a);
  CUDA_CHECK(cudaGetLastError());
  return static_cast<float>(sum_f64_to_host(ctx, drift.data<double>(), c.K) / std::max<int64_t>(1, c.K));
}

// ---- commitment loss ------------------------------------------------------

// Row r of the query buffer: out[r] = |qn_t - mu_c|^2 / D (the CPU's float
// difference, squared and summed in double); cluster g's centroid row g % K.
static __global__ void commitment_rows(const float* qn, const float* mu, const int32_t* item, const int32_t* group,
                                       int64_t rows, int64_t D, int64_t K, double* out) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // the whole warp leaves together
  const float* x = qn + static_cast<int64_t>(item[r]) * D;
  const float* m = mu + static_cast<int64_t>(group[r] % K) * D;
  double s = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const double e = __fsub_rn(x[d], m[d]);
    s += e * e;
  }
  s = warp_sum(s);
  if (lane == 0) out[r] = s / static_cast<double>(D);
}

CommitmentSums commitment_sums(Ctx& ctx, const Tensor& qn, const Clusters& cl, const Centroids& c, double* sq_slot,
                               HeadRange heads) {
  const Members q = members(ctx, cl.queries, cl, heads);
  const int64_t rows = q.rows;
  CommitmentSums s;
  s.count = rows;
  Tensor per_row = Tensor::empty({std::max<int64_t>(rows, 1)}, DType::f64, ctx);
  if (rows > 0) {
    commitment_rows<<<grid_for(rows, kWarps), kBlock, 0, stream(ctx)>>>(
        qn.data<float>(), c.mu.data<float>(), q.items(), q.groups(), rows, c.D, c.K,
        per_row.data<double>());
    CUDA_CHECK(cudaGetLastError());
  }
  if (sq_slot) {  // on the device, unread (0 for no rows)
    sum_f64(ctx, per_row.data<double>(), rows, sq_slot);
    s.sq = NAN;
  } else if (rows > 0) {
    s.sq = sum_f64_to_host(ctx, per_row.data<double>(), rows);
  }
  return s;
}

// Element i of tokens [t0, t1) x D; cluster g's centroid row g % K.
static __global__ void commitment_backward_kernel(float* dqn, const float* qn, const float* mu, const int32_t* group,
                                                  const int32_t* slot, int64_t t0, int64_t t1, int64_t k, int64_t D,
                                                  int64_t K, float scale) {
  const int64_t i = t0 * D + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= t1 * D) return;
  const int64_t t = i / D, d = i % D;
  float acc = dqn[i];
  for (int64_t j = 0; j < k; ++j) {
    const int64_t a = t * k + j;
    if (slot[a] >= 0) acc = __fadd_rn(acc, __fmul_rn(scale, __fsub_rn(qn[i], mu[group[a] % K * D + d])));
  }
  dqn[i] = acc;
}

void commitment_backward(Ctx& ctx, Tensor& dqn, const Tensor& qn, const Clusters& cl, const Centroids& c, float scale,
                         HeadRange heads) {
  const Route& r = cl.queries;
  // Assignments in index order must be clusters in ascending order (the CPU's
  // loop): true for top-1 routes and for groups choose (a = t*K + c).
  SY_CHECK(r.k == 1 || r.k == cl.per_head(),
           "commitment_backward: a route with " << r.k << " choices over " << cl.per_head() << " clusters a head");
  const int64_t T = cl.head_len(), t0 = heads.first * T, t1 = (heads.first + heads.count) * T;
  if ((t1 - t0) * c.D == 0 || r.assignments() == 0) return;
  commitment_backward_kernel<<<grid_for((t1 - t0) * c.D), kBlock, 0, stream(ctx)>>>(
      dqn.data<float>(), qn.data<float>(), c.mu.data<float>(), r.group.data<int32_t>(), r.slot.data<int32_t>(), t0,
      t1, r.k, c.D, c.K, scale);
  CUDA_CHECK(cudaGetLastError());
}

// ---- the attention ---------------------------------------------------------
//
// ops/cuda/routed_attention_rows.h holds the work of every thread and the
// order of the launches; here are the buffers and the launches. One thread
// per query row, key row, query or element (Launch, common.cuh), each owning
// what it writes.

namespace {

// One side's inverted rows and bitmaps, and the views the rows header reads.
struct SideBuffers {
  Tensor item, row_group, bits;  // i32 (rows), i32 (rows), (T, W) words as i64
  int64_t rows = 0;
  routed::Side side{};
};

SideBuffers prepare_side(Ctx& ctx, const Route& r, int64_t T, int64_t K, int64_t W) {
  // A token's assignments in index order must be its clusters in ascending
  // order (the CPU's cluster loop): top-1 routes and groups choose (a = t*K + c).
  SY_CHECK(r.k == 1 || r.k == K,
           "routed attention: a cluster route with " << r.k << " choices over " << K << " clusters a head");
  SideBuffers s;
  s.rows = r.rows();
  s.item = Tensor::empty({s.rows}, DType::i32, ctx);
  s.row_group = Tensor::empty({s.rows}, DType::i32, ctx);
  s.bits = Tensor::empty({std::max<int64_t>(T * W, 1)}, DType::i64, ctx);
  auto* bits = W > 0 ? reinterpret_cast<uint64_t*>(s.bits.data<int64_t>()) : nullptr;
  routed::side_steps(Launch{stream(ctx)}, r.group.data<int32_t>(), r.slot.data<int32_t>(), r.offset.data<int32_t>(),
                     T, r.k, K, W, s.item.data<int32_t>(), s.row_group.data<int32_t>(), bits);
  s.side = {r.group.data<int32_t>(), r.slot.data<int32_t>(), r.offset.data<int32_t>(), r.k,
            s.item.data<int32_t>(), s.row_group.data<int32_t>(), bits};
  return s;
}

// Both sides of a head (or of stacked heads), and the head the rows header reads.
struct Prepared {
  SideBuffers qs, ks;
  routed::Head head{};
};

Prepared prepare(Ctx& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Clusters& cl) {
  const int64_t T = q.dim(0), D = q.dim(1), K = cl.per_head();
  const int64_t W = routed::bitmap_words(cl.queries.k, cl.keys.k, K);
  SY_CHECK(T < (int64_t{1} << 31), "routed attention: " << T << " tokens (positions are 32-bit)");
  if (routed::lane_values(D) == 0)
    throw BackendError("routed attention: head dim " + std::to_string(D) + " has no CUDA kernel (at most " +
                       std::to_string(32 * routed::kMaxLaneValues) + ")");
  Prepared p;
  p.qs = prepare_side(ctx, cl.queries, T, K, W);
  p.ks = prepare_side(ctx, cl.keys, T, K, W);
  // (the routes alone for bf16 values: the union path passes its values apart)
  const bool f32 = q.dtype() == DType::f32;
  p.head = {f32 ? q.data<float>() : nullptr, f32 ? k.data<float>() : nullptr, f32 ? v.data<float>() : nullptr,
            T, D, K, W, 1.f / std::sqrt(static_cast<float>(D)), p.qs.side, p.ks.side};
  return p;
}

// ---- the tiled varlen kernels over the clusters (ops/cuda/routed_union_pack.h)

// q, k, v rows of the packed segments, (rows, 3D).
template <class E>
Tensor gather_qkv(Ctx& ctx, const Tensor& row_token, int64_t rows, const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t D = q.dim(1);
  Tensor qkv = Tensor::empty({rows, 3 * D}, q.dtype(), ctx);
  gather_qkv_rows<E>(Launch{stream(ctx)}, rows,
                     {elems<E>(q), elems<E>(k), elems<E>(v), row_token.data<int32_t>(), D, elems<E>(qkv)});
  return qkv;
}

// The union key sets from the pair counts per query row (cnt) and per query
// (pairs, copied back: the one wait, which sizes idx): offsets by a scan on
// the host, then each query's pairs; several clusters per query (k > 1)
// need the sort into position order.
KeySets fill_key_sets(Ctx& ctx, const routed::Head& h, const int32_t* cnt, const std::vector<int64_t>& pairs) {
  const std::vector<int64_t> off = routed::key_offsets(pairs);
  KeySets ks;
  ks.off = upload(ctx, off);
  const int64_t P = off.back();
  ks.idx = Tensor::empty({P}, DType::i32, ctx);
  if (P == 0) return ks;
  routed::FillKeys fill{h, cnt, ks.off.data<int64_t>(), ks.idx.data<int32_t>(), nullptr, 0};
  if (h.qs.k == 1) {
    Launch{stream(ctx)}(h.T, fill);
    return ks;
  }
  Tensor unsorted = Tensor::empty({P}, DType::i32, ctx), key = Tensor::empty({P}, DType::i64, ctx),
         sorted_key = Tensor::empty({P}, DType::i64, ctx);
  fill.idx = unsorted.data<int32_t>();
  fill.sort_key = reinterpret_cast<uint64_t*>(key.data<int64_t>());
  fill.sort_bits = routed::position_bits(h.T);
  Launch{stream(ctx)}(h.T, fill);
  radix_sort_pairs(ctx, fill.sort_key, reinterpret_cast<uint64_t*>(sorted_key.data<int64_t>()),
                   unsorted.data<int32_t>(), ks.idx.data<int32_t>(), P, 0, 2 * fill.sort_bits);
  return ks;
}

// Whether the union path takes these clusters: a head dim the flash kernels
// take for dt, packed rows within 32 bits. Otherwise the per-row kernels,
// f32 only (the op allows bf16 at the tiled head dims alone, so only the
// row limit can send bf16 here: refused, naming op).
bool tiled(const Clusters& cl, DType dt, int64_t D, const char* op) {
  const int64_t rows = cl.queries.rows() + cl.keys.rows();
  if (tiled_head_dim(dt, D) && rows < (int64_t{1} << 31)) return true;
  SY_CHECK(dt == DType::f32, op << ": bf16 with " << rows << " packed rows is past the varlen kernels' limit (2^31)");
  return false;
}

// Routed attention's merge of a token's cluster rows into o (T tokens), and
// the scatter of the packed gradients onto dq, dk, dv: in 16-byte chunks
// where D and the tensors allow (the same bits), element by element
// otherwise.
template <class E>
void union_out_rows(const Launch& run, int64_t T, const routed::UnionOut<E>& u) {
  using Ty = typename E::T;
  constexpr int V = 16 / sizeof(Ty);
  const int64_t D = u.h.D;
  if (routed::chunk_elems<Ty>(D, {u.v, u.out_p, u.o}) == V)  // (q, k: read an element at a time)
    run(T * D / V, routed::UnionOut<E, V>{u.h, u.q, u.k, u.v, u.l, u.cnt, u.n, u.out_p, u.lse_p, u.scale, u.o, u.lse});
  else
    run(T * D, u);
}

template <class E>
void union_scatter_rows(const Launch& run, int64_t T, const routed::UnionScatter<E>& u) {
  using Ty = typename E::T;
  constexpr int V = 16 / sizeof(Ty);
  const int64_t D = u.h.D;
  if (routed::chunk_elems<Ty>(D, {u.dqkv_p, u.dout, u.dq, u.dk, u.dv}) == V)
    run(T * D / V, routed::UnionScatter<E, V>{u.h, u.l, u.n, u.dqkv_p, u.dout, u.dq, u.dk, u.dv});
  else
    run(T * D, u);
}

// The union packing of a prepared head: segments, rows, flags.
struct UnionPack {
  Tensor seg, key_len, row_token, is_query, is_key;
  routed::UnionLayout layout{};
  int64_t rows = 0, max_len = 0;
};

UnionPack union_pack(Ctx& ctx, const Clusters& cl, const Prepared& p) {
  const Route &qr = cl.queries, &kr = cl.keys;
  const int64_t K = cl.num();
  SY_CHECK(static_cast<int64_t>(qr.host_offset.size()) == K + 1 && static_cast<int64_t>(kr.host_offset.size()) == K + 1,
           "routed attention: routes without host offsets for their " << K << " clusters");
  UnionPack u;
  u.rows = qr.rows() + kr.rows();
  for (int64_t c = 0; c < K; ++c)
    u.max_len = std::max<int64_t>(u.max_len, qr.host_offset[c + 1] - qr.host_offset[c] + kr.host_offset[c + 1] -
                                                 kr.host_offset[c]);
  auto i32 = [&](int64_t n) { return Tensor::empty({n}, DType::i32, ctx); };
  u.seg = i32(K + 1), u.key_len = i32(std::max<int64_t>(K, 1));
  u.row_token = i32(u.rows), u.is_query = i32(u.rows), u.is_key = i32(u.rows);
  u.layout = {qr.offset.data<int32_t>(), kr.offset.data<int32_t>()};
  const routed::UnionRows rows{u.row_token.data<int32_t>(), u.is_query.data<int32_t>(), u.is_key.data<int32_t>()};
  const Launch run{stream(ctx)};
  run(K + 1, routed::UnionSegments{u.layout, K, u.seg.data<int32_t>(), u.key_len.data<int32_t>()});
  run(p.qs.rows, routed::UnionSideRows{p.head.qs, p.head.K, p.head.W, u.layout, true, rows});
  run(p.ks.rows, routed::UnionSideRows{p.head.ks, p.head.K, p.head.W, u.layout, false, rows});
  return u;
}

VarlenAttention union_varlen(const UnionPack& u, const Prepared& p, int64_t K, int64_t D) {
  VarlenAttention v{K, u.max_len, u.rows, D, 1, u.seg.data<int32_t>(), u.is_query.data<int32_t>(),
                    u.is_key.data<int32_t>(), u.key_len.data<int32_t>()};
  v.pos = u.row_token.data<int32_t>();
  v.qbits = p.qs.side.bits;
  v.kbits = p.ks.side.bits;
  v.words = static_cast<int>(p.head.W);
  v.clusters = static_cast<int>(p.head.K);
  v.all_flagged = p.head.W == 0;  // one cluster per token a side: every flag 1 (routed_union_pack.h)
  return v;
}

// Pair counts per query row and per token (n: -1 none, 0 lone, else pairs).
struct PairCounts {
  Tensor cnt, n;
};
PairCounts union_counts(Ctx& ctx, const Prepared& p) {
  PairCounts c{Tensor::empty({std::max<int64_t>(p.qs.rows, 1)}, DType::i32, ctx),
                Tensor::empty({p.head.T}, DType::i32, ctx)};
  const Launch run{stream(ctx)};
  run(p.qs.rows, routed::CountRow{p.head, c.cnt.data<int32_t>()});
  run(p.head.T, routed::UnionCounts{p.head, c.cnt.data<int32_t>(), c.n.data<int32_t>()});
  return c;
}

// What union_forward keeps for union_backward (RoutedSaved), and the inputs
// it came from.
struct UnionState {
  Prepared p;
  UnionPack u;
  Tensor qkv;
  PairCounts c;
  const void *q, *k, *v, *queries, *keys;
};

template <class E>
std::shared_ptr<const UnionState> union_state(Ctx& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                                              const Clusters& cl) {
  auto st = std::make_shared<UnionState>();
  st->p = prepare(ctx, q, k, v, cl);
  st->u = union_pack(ctx, cl, st->p);
  st->qkv = gather_qkv<E>(ctx, st->u.row_token, st->u.rows, q, k, v);
  st->c = union_counts(ctx, st->p);
  st->q = q.raw(), st->k = k.raw(), st->v = v.raw();
  st->queries = cl.queries.group.raw(), st->keys = cl.keys.group.raw();
  return st;
}

// The forward's state where it was made from these inputs, else a new one.
template <class E>
std::shared_ptr<const UnionState> union_state(Ctx& ctx, const RoutedAttentionBackwardArgs& a) {
  if (a.saved && a.saved->state) {
    auto st = std::static_pointer_cast<const UnionState>(a.saved->state);
    if (st->q == a.q.raw() && st->k == a.k.raw() && st->v == a.v.raw() &&
        st->queries == a.clusters.queries.group.raw() && st->keys == a.clusters.keys.group.raw())
      return st;
  }
  return union_state<E>(ctx, a.q, a.k, a.v, a.clusters);
}

template <class E>
void union_forward(Ctx& ctx, const RoutedAttentionArgs& a) {
  const int64_t T = a.q.dim(0), D = a.q.dim(1), K = a.clusters.num();
  // Each stage its own part of the op's profile interval (core/op_profile.h).
  std::shared_ptr<const UnionState> st;
  {
    const OpScope part(ctx.profiler, "pack clusters, gather q k v");
    st = union_state<E>(ctx, a.q, a.k, a.v, a.clusters);
  }
  const Prepared& p = st->p;
  const UnionPack& u = st->u;
  const PairCounts& c = st->c;
  Tensor out = Tensor::empty({u.rows, D}, a.q.dtype(), ctx), lse = Tensor::empty({1, u.rows}, DType::f32, ctx);
  {
    const OpScope part(ctx.profiler, "varlen attention");
    varlen_attention_forward(ctx, union_varlen(u, p, K, D), st->qkv, out, lse);
  }
  if (a.saved) a.saved->state = st;
  const OpScope part(ctx.profiler, "merge by LSE, pair counts");
  const Launch run{stream(ctx)};
  const int32_t *cnt = c.cnt.data<int32_t>(), *n = c.n.data<int32_t>();
  run(T, routed::UnionLse{p.head, u.layout, cnt, n, lse.data<float>(), a.lse.data<float>()});
  union_out_rows(run, T, routed::UnionOut<E>{p.head, elems<E>(a.q), elems<E>(a.k), elems<E>(a.v), u.layout, cnt, n,
                                              elems<E>(out), lse.data<float>(), 1.f / std::sqrt(static_cast<float>(D)),
                                              elems<E>(a.o), a.lse.data<float>()});
  // The key sets as the rows path builds them (its FillKeys, the same pair
  // rule), or their count alone.
  if (!a.key_sets) {
    Tensor sizes = Tensor::empty({T}, DType::f64, ctx);
    run(T, routed::KeySetSizes{n, nullptr, sizes.data<double>()});
    KeySets ks;
    if (a.pair_count) {
      sum_f64(ctx, sizes.data<double>(), T, a.pair_count);  // left on the device for the caller
      ks.counted = 0;  // counted (into *pair_count): the backward reads no key sets
    } else {
      ks.counted = static_cast<int64_t>(sum_f64_to_host(ctx, sizes.data<double>(), T));  // exact below 2^53
    }
    a.keys = ks;
    return;
  }
  Tensor pairs = Tensor::empty({T}, DType::i64, ctx);
  run(T, routed::KeySetSizes{n, pairs.data<int64_t>(), nullptr});
  a.keys = fill_key_sets(ctx, p.head, cnt, download(ctx, pairs.data<int64_t>(), T));
}

template <class E>
void union_backward(Ctx& ctx, const RoutedAttentionBackwardArgs& a) {
  const int64_t T = a.q.dim(0), D = a.q.dim(1), K = a.clusters.num();
  const DType dt = a.q.dtype();
  std::shared_ptr<const UnionState> st;
  {
    const OpScope part(ctx.profiler, "pack clusters, gather q k v (unless saved)");
    st = union_state<E>(ctx, a);
  }
  const Prepared& p = st->p;
  const UnionPack& u = st->u;
  Tensor dout = Tensor::empty({u.rows, D}, dt, ctx), out = Tensor::empty({u.rows, D}, dt, ctx),
         lse = Tensor::empty({1, u.rows}, DType::f32, ctx), dqkv;
  const Launch run{stream(ctx)};
  {
    const OpScope part(ctx.profiler, "gather dout, o, lse; zero dqkv");
    dqkv = Tensor::zeros({u.rows, 3 * D}, dt, ctx);
    gather_grad_rows<E>(run, u.rows,
                        {elems<E>(a.dout), elems<E>(a.o), a.lse.data<float>(), u.row_token.data<int32_t>(),
                         u.is_query.data<int32_t>(), D, elems<E>(dout), elems<E>(out), lse.data<float>()});
  }
  {
    const OpScope part(ctx.profiler, "varlen attention backward");
    varlen_attention_backward(ctx, union_varlen(u, p, K, D), dqkv, dout, st->qkv, out, lse);
  }
  const OpScope part(ctx.profiler, "scatter dq dk dv");
  union_scatter_rows(run, T,
                     routed::UnionScatter<E>{p.head, u.layout, st->c.n.data<int32_t>(), elems<E>(dqkv),
                                             elems<E>(a.dout), elems<E>(a.dq), elems<E>(a.dk), elems<E>(a.dv)});
}

}  // namespace

void routed_attention_forward(Ctx& ctx, const RoutedAttentionArgs& a) {
  // dtypes checked by the op (ops/routed_attention.cc)
  const DType dt = a.q.dtype();
  const int64_t D = a.q.dim(1);
  if (tiled(a.clusters, dt, D, "routed_attention_forward"))
    return dt == DType::bf16 ? union_forward<Bf16>(ctx, a) : union_forward<routed::F32>(ctx, a);
  if (a.saved) a.saved->state.reset();  // (the rows path keeps nothing)
  const Prepared p = prepare(ctx, a.q, a.k, a.v, a.clusters);
  const routed::Head& h = p.head;
  const int64_t rows = p.qs.rows;
  Tensor o_part = Tensor::empty({rows * h.D}, DType::f32, ctx), lse_part = Tensor::empty({rows}, DType::f32, ctx);
  Tensor cnt_part = Tensor::empty({rows}, DType::i32, ctx), pairs = Tensor::empty({h.T}, DType::i64, ctx);
  const routed::ForwardBuffers b{o_part.data<float>(),  lse_part.data<float>(), cnt_part.data<int32_t>(),
                                 a.o.data<float>(),     a.lse.data<float>(),    pairs.data<int64_t>()};
  routed::with_lane_values(h.D, [&](auto v) {
    routed::forward_steps<decltype(v)::value>(Launch{stream(ctx)}, WarpLaunch{stream(ctx)}, h, rows, b);
  });

  a.keys = fill_key_sets(ctx, h, cnt_part.data<int32_t>(), download(ctx, pairs.data<int64_t>(), h.T));
  if (!a.key_sets && a.pair_count) {  // (known here: the key sets were built; staged before the call returns)
    const double count = static_cast<double>(a.keys.pairs());
    CUDA_CHECK(cudaMemcpyAsync(a.pair_count, &count, sizeof(double), cudaMemcpyHostToDevice, stream(ctx)));
  }
}

void routed_attention_backward(Ctx& ctx, const RoutedAttentionBackwardArgs& a) {
  const DType dt = a.q.dtype();
  const int64_t D = a.q.dim(1);
  if (tiled(a.clusters, dt, D, "routed_attention_backward"))
    return dt == DType::bf16 ? union_backward<Bf16>(ctx, a) : union_backward<routed::F32>(ctx, a);
  const Prepared p = prepare(ctx, a.q, a.k, a.v, a.clusters);
  const routed::Head& h = p.head;
  const int64_t qrows = p.qs.rows, krows = p.ks.rows;
  Tensor delta = Tensor::empty({h.T}, DType::f32, ctx), dq_part = Tensor::empty({qrows * h.D}, DType::f32, ctx);
  Tensor cnt_part = Tensor::empty({qrows}, DType::i32, ctx);
  Tensor dk_part = Tensor::empty({krows * h.D}, DType::f32, ctx), dv_part = Tensor::empty({krows * h.D}, DType::f32, ctx);
  Tensor self = Tensor::empty({h.T}, DType::i32, ctx), self_a = Tensor::empty({h.T}, DType::f32, ctx),
         self_ds = Tensor::empty({h.T}, DType::f32, ctx);
  const routed::BackwardBuffers b{a.dout.data<float>(),    a.o.data<float>(),       a.lse.data<float>(),
                                  delta.data<float>(),     dq_part.data<float>(),   cnt_part.data<int32_t>(),
                                  dk_part.data<float>(),   dv_part.data<float>(),   self.data<int32_t>(),
                                  self_a.data<float>(),    self_ds.data<float>(),   a.dq.data<float>(),
                                  a.dk.data<float>(),      a.dv.data<float>()};
  routed::with_lane_values(h.D, [&](auto v) {
    routed::backward_steps<decltype(v)::value>(Launch{stream(ctx)}, WarpLaunch{stream(ctx)}, h, qrows, krows, b);
  });
}

// k-means runs once per run, on the warm-up batch: the CPU reference on a host
// copy of x (the same centroids as a CPU run on the same x), copied back.
void kmeans_init(Ctx& ctx, Centroids& c, const Tensor& x, int iters, Rng& rng) {
  Ctx& host = host_ctx();
  Centroids hc(c.K, c.D, host);
  cpu::kmeans_init(host, hc, x.to(host), iters, rng);
  c.mu.copy_from(hc.mu, ctx);
  c.sum.copy_from(hc.sum, ctx);
  c.count.copy_from(hc.count, ctx);
  c.initialized = true;
}

}  // namespace sy::ops::cuda
