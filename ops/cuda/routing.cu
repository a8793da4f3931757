// The routing core on CUDA (ops/routing.h). Every decision is made with the
// same float operations as the CPU reference, so routes are bitwise the CPU's
// for the same probabilities (class E); no atomics anywhere.
//
// router_scores:  softmax (max, exp, sum by a fixed butterfly) or sigmoid;
//                 up to 128 groups 8 or 16 lanes an item, the row in
//                 registers (row_layout), else a warp an item; backward a
//                 warp an item (<p, dp> by a butterfly).
// normalize_scores: a warp a row (the row sum by a butterfly); backward the
//                 same with a second butterfly for <dq, q>.
// tokens_choose_logits: the scores and step 1 below in one kernel of the
//                 same layout (the logits read once, the same bits as
//                 router_scores, the probabilities written or not), then
//                 steps 2 and 3. Up to 128 groups and k <= 8 its top-k is
//                 one pass (gate_topk_regs: each lane's k best, merged
//                 across the row's lanes), the same choice as step 1's.
// tokens_choose:
//   1. top-k, one warp per item: k rounds of a warp argmax over the selection
//      scores key + bias, each round restricted to the scores strictly below
//      the previous pick in the order (score descending, index ascending), so
//      ties go to the lower group index as in the CPU's partial_sort. Lane 0
//      writes group, weight = p (renormalised in choice order) and the item's
//      top score p of its first choice.
//   2. slots: one stable radix sort (cub_ops) of the assignments a = i*k + j,
//      input in order of a, on the 64-bit key
//          [ group | choice rank j | ~ordered_bits(top score of item i) ]
//            high                            low (SCORE priority only: 32 bits;
//                                            the priority keys where given)
//      The CPU visits assignments choice rank by choice rank, items in
//      position order (POSITION) or by descending top score with ties to the
//      lower position (SCORE), and gives each its group's next slot. Sorted by
//      this key, a group's assignments are one contiguous run in exactly that
//      visiting order: by j first, then (SCORE) by descending score, and among
//      equal keys by input order, i.e. ascending position, which is both
//      priorities' tie rule. So an assignment's slot is its rank within its
//      group's run, kept when the rank is below the capacity. TOKEN_ORDER priority
//      visits the assignments in index order: the key is the group alone
//      (no j bits), and the stable sort keeps index order within a group.
//   3. run starts by binary search, counts = min(run length, capacity)
//      (dropless: capacity = max(1, longest run)), offsets by a one-block scan
//      of integers (exact), slots; then the one device-to-host copy of
//      [offset (G+1) | capacity | assigned | dropped]. A padded route's
//      offsets are g C and its host part is known: no copy.
//   Runs with their own groups (segment > 0): step 1 writes group
//   (i / segment) G + g, and the same sort, counts and copy serve every run
//   at once (a run's groups are contiguous runs of the sorted keys).
// groups_choose:  a radix select per (segment, group) column
//   (ops/cuda/column_select.h): the column's per-th best key tau by four
//   8-bit histogram passes over tiles of items, then every key below tau and
//   the first equal ones in item order kept, slots in item order - the
//   first `capacity` of the column sorted by descending score, ties to the
//   lower item, as the CPU's partial_sort. Counts are known on the host
//   (capacity per segment): no copy back. With own_groups, run (segment,
//   group) is the route's group segment*G + group and its slots start at 0.
//   (It replaced a stable radix sort of every (segment, group, item): at
//   routed attention's balanced mode, 64k tokens x 8 heads x 256 clusters,
//   134M 64-bit keys.)
// threshold_route: one block; slots are an exclusive scan of the kept flags.
// route_weights_backward: one thread per item, the CPU's loop.
#include "ops/cuda/column_select.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/cub_ops.h"
#include "ops/cuda/router_rows.cuh"
#include "ops/cuda/routing_steps.h"
#include "ops/cuda/topk_merge.h"
#include "ops/routing.h"

#include <climits>
#include <cmath>
#include <numeric>
#include <type_traits>

namespace sy::ops::cuda {

namespace {
constexpr int kWarps = kBlock / 32;  // items per block in the warp-per-item kernels
}  // namespace

// ---- router_scores --------------------------------------------------------

static __global__ void softmax_rows(float* probs, const float* logits, int64_t N, int64_t G) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= N) return;
  const float* l = logits + i * G;
  float* p = probs + i * G;
  float mx = -INFINITY;
  for (int64_t g = lane; g < G; g += 32) mx = fmaxf(mx, l[g]);
  mx = warp_max(mx);
  float sum = 0.f;
  for (int64_t g = lane; g < G; g += 32) sum += (p[g] = expf(l[g] - mx));
  sum = warp_sum(sum);
  for (int64_t g = lane; g < G; g += 32) p[g] /= sum;
}

// A row of G <= L NV scores in registers, L lanes a row (L = 8 or 16:
// a warp holds 32 / L rows; lane `sub` of its row holds the NV adjacent
// groups sub NV + j, j < NV, so that a lane reads its logits as 16-byte
// loads where the rows allow, row_vec): the logits l read once, the
// probabilities written to p once (p null: not written, the gating that
// leaves them to be recomputed) and left in v. Softmax: the lane's values
// in ascending g, then a butterfly over the row's L lanes (offsets below L
// never leave the row), the division after the exp as stored. router_scores
// and tokens_choose_logits both take their rows from here with the same L
// and NV (row_layout), so they give the same bits. Lanes of a row past N
// (valid false) take part in the shuffles and write nothing. (One row a
// warp, as this was until 2026-12-04, spent 5 shuffles a reduction and a
// top-k round on one row of 64 groups, where 8 lanes a row spend 3 on each
// of 4 rows. Until 2026-12-05 lane `sub` held groups sub + L j: 4-byte loads
// and stores, 2 NV instructions a lane where NV / 2 now do.)
template <int L, int NV>
static __device__ __forceinline__ void scores_in_registers(float (&v)[NV], const float* l, float* p, int64_t G,
                                                           int sub, bool valid, bool softmax, bool vec) {
  load_row<NV>(v, l, G, sub, valid, vec);
  const int g0 = sub * NV;
  if (softmax) {
    float mx, sum;
    row_exp<L, NV>(v, G, sub, mx, sum);
#pragma unroll
    for (int j = 0; j < NV; ++j)
      if (g0 + j < G) v[j] /= sum;
  } else {
#pragma unroll
    for (int j = 0; j < NV; ++j) v[j] = 1.f / (1.f + expf(-v[j]));
  }
  if (valid && p) store_row<NV>(p, v, G, sub, vec);
}

// router_scores' softmax with the row in registers: the logits read once
// and the probabilities written once, where softmax_rows reads the logits
// twice and writes each probability twice.
template <int L, int NV>
static __global__ void softmax_rows_regs(float* probs, const float* logits, int64_t N, int64_t G, bool vec) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(rows_per_block<L>()) + threadIdx.x / L;
  const bool valid = i < N;
  const int64_t row = valid ? i : 0;
  float v[NV];
  scores_in_registers<L, NV>(v, logits + row * G, probs + row * G, G, threadIdx.x % L, valid, true, vec);
}

static __global__ void sigmoid_all(float* probs, const float* logits, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    probs[i] = 1.f / (1.f + expf(-logits[i]));
}

static __global__ void scores_backward_rows(float* dlogits, const float* dprobs, const float* probs, int64_t N,
                                            int64_t G, bool softmax) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= N) return;
  const float* p = probs + i * G;
  const float* dp = dprobs + i * G;
  float* dl = dlogits + i * G;
  if (!softmax) {
    for (int64_t g = lane; g < G; g += 32) dl[g] += p[g] * (1.f - p[g]) * dp[g];
    return;
  }
  float dot = 0.f;
  for (int64_t g = lane; g < G; g += 32) dot += p[g] * dp[g];
  dot = warp_sum(dot);
  for (int64_t g = lane; g < G; g += 32) dl[g] += p[g] * (dp[g] - dot);
}

void router_scores(Ctx& ctx, Tensor& probs, const Tensor& logits, ScoreFn fn) {
  const int64_t N = logits.dim(0), G = logits.dim(1);
  if (N * G == 0) return;
  float* p = probs.data<float>();
  const float* l = logits.data<float>();
  const unsigned grid = grid_for(N, kWarps);
  if (fn == ScoreFn::sigmoid)
    sigmoid_all<<<grid_stride(N * G), kBlock, 0, stream(ctx)>>>(p, l, N * G);
  else if (G <= 128)  // the row in registers (row_layout)
    with_row_layout(G, [&](auto L, auto NV) {
      constexpr int kL = decltype(L)::value, kNV = decltype(NV)::value;
      softmax_rows_regs<kL, kNV>
          <<<grid_for(N, rows_per_block<kL>()), kBlock, 0, stream(ctx)>>>(p, l, N, G, row_vec(G, {p, l}));
    });
  else
    softmax_rows<<<grid, kBlock, 0, stream(ctx)>>>(p, l, N, G);
  CUDA_CHECK(cudaGetLastError());
}

void router_scores_backward(Ctx& ctx, Tensor& dlogits, const Tensor& dprobs, const Tensor& probs, ScoreFn fn) {
  const int64_t N = probs.dim(0), G = probs.dim(1);
  if (N * G == 0) return;
  scores_backward_rows<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(
      dlogits.data<float>(), dprobs.data<float>(), probs.data<float>(), N, G, fn == ScoreFn::softmax);
  CUDA_CHECK(cudaGetLastError());
}

// ---- normalize_scores -----------------------------------------------------

// A warp a row: the row sum by the butterfly, then q = p / s (s = 0: 0).
static __global__ void normalize_rows(float* q, const float* probs, int64_t N, int64_t G) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= N) return;
  const float* p = probs + i * G;
  float s = 0.f;
  for (int64_t g = lane; g < G; g += 32) s += p[g];
  s = warp_sum(s);
  for (int64_t g = lane; g < G; g += 32) q[i * G + g] = s > 0.f ? p[g] / s : 0.f;
}

// dp += (dq - <dq, q>) / s, q = p / s recomputed: two butterflies a row.
static __global__ void normalize_rows_backward(float* dprobs, const float* dq, const float* probs, int64_t N,
                                               int64_t G) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= N) return;
  const float* p = probs + i * G;
  const float* d = dq + i * G;
  float s = 0.f;
  for (int64_t g = lane; g < G; g += 32) s += p[g];
  s = warp_sum(s);
  if (!(s > 0.f)) return;
  float dot = 0.f;
  for (int64_t g = lane; g < G; g += 32) dot += d[g] * (p[g] / s);
  dot = warp_sum(dot);
  for (int64_t g = lane; g < G; g += 32) dprobs[i * G + g] += (d[g] - dot) / s;
}

void normalize_scores(Ctx& ctx, Tensor& q, const Tensor& probs) {
  const int64_t N = probs.dim(0), G = probs.dim(1);
  if (N * G == 0) return;
  normalize_rows<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(q.data<float>(), probs.data<float>(), N, G);
  CUDA_CHECK(cudaGetLastError());
}

void normalize_scores_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dq, const Tensor& probs) {
  const int64_t N = probs.dim(0), G = probs.dim(1);
  if (N * G == 0) return;
  normalize_rows_backward<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(dprobs.data<float>(), dq.data<float>(),
                                                                           probs.data<float>(), N, G);
  CUDA_CHECK(cudaGetLastError());
}

// ---- tokens_choose --------------------------------------------------------

namespace {
struct TopkArgs {
  const float* probs;
  const float* keys;  // selection keys, or null for probs
  const float* bias;  // selection bias, or null
  int32_t* group;
  float* weight;
  float* top;  // (N) p of each item's first choice
  int64_t N;
  int G, k;
  bool renormalize;
  int64_t segment;  // > 0: runs with their own groups (group (i / segment) G + g)
};

// Device layout of a route's small host-visible part.
struct Meta {
  int64_t G;
  __host__ __device__ int64_t offset(int64_t g) const { return g; }
  __host__ __device__ int64_t capacity() const { return G + 1; }
  __host__ __device__ int64_t assigned() const { return G + 2; }
  __host__ __device__ int64_t dropped() const { return G + 3; }
  __host__ __device__ int64_t size() const { return G + 4; }
};
}  // namespace

// One round of a top-k, lane by lane: selection score s of group g (NaN
// ranks last, as on the CPU: k groups in range whatever the scores) becomes
// the lane's best if it comes after the previous pick (prev_g < 0: none yet)
// in the order score descending, index ascending, and beats the best so far
// (a lane's g ascend: ties keep the lower).
static __device__ __forceinline__ void consider(float s, int g, float prev_v, int prev_g, float& best_v, int& best_g) {
  if (s != s) s = -INFINITY;
  const bool after_prev = prev_g < 0 || s < prev_v || (s == prev_v && g > prev_g);
  if (after_prev && (best_g < 0 || s > best_v)) best_v = s, best_g = g;
}

// The round's pick over a row's L lanes (a warp: L = 32): a butterfly on
// (score, group) with the same order; every lane of the row ends with the
// same best_g (offsets below L never leave the row).
template <int L>
static __device__ __forceinline__ void row_pick(float& best_v, int& best_g) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best_v, o);
    const int og = __shfl_xor_sync(0xffffffffu, best_g, o);
    if (og >= 0 && (best_g < 0 || ov > best_v || (ov == best_v && og < best_g))) best_v = ov, best_g = og;
  }
}

// Lane 0's record of item i's pick r: its group (with the run's base) and
// weight p of the group, added to wsum for the renormalisation.
static __device__ __forceinline__ void record_pick(const TopkArgs& a, int64_t i, int r, int64_t group, float p,
                                                   float& wsum) {
  a.group[i * a.k + r] = static_cast<int32_t>(group);
  a.weight[i * a.k + r] = p;
  wsum += p;
}

// Lane 0's end of item i: the weights renormalised (in choice order), and
// the probability of its first choice (the slots' key; tokens_gate has none).
static __device__ __forceinline__ void finish_item(const TopkArgs& a, int64_t i, float wsum, float first_p) {
  if (a.renormalize && wsum > 0)
    for (int r = 0; r < a.k; ++r) a.weight[i * a.k + r] /= wsum;
  if (a.top) a.top[i] = first_p;
}

// Item i's top-k by the whole warp (lane `lane`), p its row of probabilities.
static __device__ void topk_row(const TopkArgs& a, int64_t i, int lane, const float* p) {
  const float* key = a.keys ? a.keys + i * a.G : p;
  float prev_v = 0.f, wsum = 0.f;
  int prev_g = -1, first_g = 0;  // the previous pick (-1 before the first), the first
  const int64_t base = a.segment > 0 ? i / a.segment * a.G : 0;
  for (int j = 0; j < a.k; ++j) {
    float best_v = 0.f;
    int best_g = -1;
    for (int g = lane; g < a.G; g += 32)
      consider(key[g] + (a.bias ? a.bias[g] : 0.f), g, prev_v, prev_g, best_v, best_g);
    row_pick<32>(best_v, best_g);
    prev_v = best_v, prev_g = best_g;
    if (j == 0) first_g = best_g;
    if (lane == 0 && best_g >= 0) record_pick(a, i, j, base + best_g, p[best_g], wsum);
  }
  if (lane == 0) finish_item(a, i, wsum, p[first_g]);
}

static __global__ void topk_kernel(TopkArgs a) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  if (i >= a.N) return;  // the whole warp leaves together
  topk_row(a, i, threadIdx.x % 32, a.probs + i * a.G);
}

// Gating (tokens_choose_logits): a warp's row of probabilities by
// softmax_rows' or sigmoid_all's arithmetic (the same bits), written, then
// its top-k from that row (the warp's own writes: __syncwarp orders them).
static __global__ void gate_topk_kernel(TopkArgs a, const float* logits, bool softmax) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= a.N) return;
  const float* l = logits + i * a.G;
  float* p = const_cast<float*>(a.probs) + i * a.G;
  if (softmax) {
    float mx = -INFINITY;
    for (int g = lane; g < a.G; g += 32) mx = fmaxf(mx, l[g]);
    mx = warp_max(mx);
    float sum = 0.f;
    for (int g = lane; g < a.G; g += 32) sum += (p[g] = expf(l[g] - mx));
    sum = warp_sum(sum);
    for (int g = lane; g < a.G; g += 32) p[g] /= sum;
  } else {
    for (int g = lane; g < a.G; g += 32) p[g] = 1.f / (1.f + expf(-l[g]));
  }
  __syncwarp();
  topk_row(a, i, lane, p);
}

// The same with the row in registers (scores_in_registers: L lanes a row,
// NV adjacent groups a lane), the top-k in one pass: the logits read once,
// the probabilities written once (or not: a.probs null), no reading back.
// Each lane keeps its K best (score, group, p) in order (score descending,
// group ascending: topk_row's order, NaN as -inf), inserting its NV values
// in ascending g; then log2 L butterfly steps each merge two lanes' lists:
// the better of A_r and B_(K-1-r) is the top K of both lists as a bitonic
// sequence (A descending, B reversed ascending), which a bitonic merge puts
// in order. Groups are distinct, so the order is total and every lane of
// the row ends with the same list, the row's top K; a list the row's k
// picks are a prefix of (K the power of two >= k; lanes without K values
// fill theirs with sentinels, below every group). Lane r < k of the row
// writes pick r. (Until 2026-12-05 k rounds each took every value through
// a compare against the previous pick, then a butterfly: 27 us for the
// H200's 65536 x 64 top-2, where the softmax alone took 16 us.)
namespace {
using topk::Pick;
// The row's top K over its L lanes (ops/cuda/topk_merge.h).
template <int L, int K>
__device__ __forceinline__ void merge_row(Pick (&top)[K]) {
#pragma unroll
  for (int o = L / 2; o > 0; o >>= 1) {
    Pick other[K];
#pragma unroll
    for (int r = 0; r < K; ++r) {
      other[r].s = __shfl_xor_sync(0xffffffffu, top[r].s, o);
      other[r].g = __shfl_xor_sync(0xffffffffu, top[r].g, o);
      other[r].p = __shfl_xor_sync(0xffffffffu, top[r].p, o);
    }
    topk::merge_sorted<K>(top, other);
  }
}
}  // namespace

template <int L, int NV, int K>
static __global__ void gate_topk_regs(TopkArgs a, const float* logits, bool softmax, bool vec) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(rows_per_block<L>()) + threadIdx.x / L;
  const bool valid = row < a.N;
  const int64_t i = valid ? row : 0;
  const int sub = threadIdx.x % L, g0 = sub * NV;
  float v[NV], key[NV], bias[NV];
  scores_in_registers<L, NV>(v, logits + i * a.G, a.probs ? const_cast<float*>(a.probs) + i * a.G : nullptr, a.G,
                             sub, valid, softmax, vec);
  if (a.keys) load_row<NV>(key, a.keys + i * a.G, a.G, sub, valid, vec);
  if (a.bias) load_row<NV>(bias, a.bias, a.G, sub, true, vec);
  Pick top[K];
#pragma unroll
  for (int r = 0; r < K; ++r) top[r] = topk::none();
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (g0 + j >= a.G) continue;
    float s = (a.keys ? key[j] : v[j]) + (a.bias ? bias[j] : 0.f);
    if (s != s) s = -INFINITY;
    topk::insert<K>(top, Pick{s, g0 + j, v[j]});
  }
  merge_row<L, K>(top);
  if (!valid || sub >= a.k) return;
  // Lane sub records pick sub; every lane of the row holds the same picks.
  const int64_t base = a.segment > 0 ? i / a.segment * a.G : 0;
  float wsum = 0.f, mine_p = 0.f;
  int mine_g = 0;
#pragma unroll
  for (int r = 0; r < K; ++r) {
    if (r < a.k) wsum += top[r].p;  // in choice order, as record_pick adds
    if (r == sub) mine_p = top[r].p, mine_g = top[r].g;
  }
  a.group[i * a.k + sub] = static_cast<int32_t>(base + mine_g);
  a.weight[i * a.k + sub] = a.renormalize && wsum > 0 ? mine_p / wsum : mine_p;
  if (a.top && sub == 0) a.top[i] = top[0].p;
}

// Key and value of assignment a (see the top of the file).
static __global__ void slot_keys(const int32_t* group, const float* top, int64_t n, int k, int jbits, bool by_score,
                                 uint64_t* keys, int32_t* values) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (a >= n) return;
  const int sbits = by_score ? 32 : 0;
  uint64_t key = static_cast<uint64_t>(group[a]) << (jbits + sbits);
  if (jbits > 0) key |= static_cast<uint64_t>(a % k) << sbits;  // (none: TOKEN_ORDER priority)
  if (by_score) key |= static_cast<uint32_t>(~ordered_bits(nan_last(top[a / k])));
  keys[a] = key;
  values[a] = static_cast<int32_t>(a);
}

// One block: per-group counts under the capacity (capacity < 0: dropless,
// the longest run, at least 1), offsets, and the host-visible totals.
static __global__ void route_counts(const int32_t* starts, int64_t G, int64_t assigned, int64_t capacity,
                                    bool padded, int32_t* count, int32_t* meta) {
  __shared__ int64_t scratch[kBlock];
  const Meta m{G};
  const int64_t per = (G + blockDim.x - 1) / blockDim.x;
  const int64_t g0 = min(G, threadIdx.x * per), g1 = min(G, g0 + per);
  int64_t longest = 0;
  for (int64_t g = g0; g < g1; ++g) longest = max(longest, static_cast<int64_t>(starts[g + 1] - starts[g]));
  longest = block_max(longest, scratch);
  const int64_t cap = capacity >= 0 ? capacity : max(int64_t{1}, longest);
  int64_t local = 0;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t c = min(static_cast<int64_t>(starts[g + 1] - starts[g]), cap);
    count[g] = static_cast<int32_t>(c);
    local += c;
  }
  int64_t total;
  int64_t run = block_exclusive_sum(local, scratch, &total);
  if (threadIdx.x == 0) {
    meta[m.offset(G)] = static_cast<int32_t>(total);
    meta[m.capacity()] = static_cast<int32_t>(min(cap, static_cast<int64_t>(INT_MAX)));
    meta[m.assigned()] = static_cast<int32_t>(assigned);
    meta[m.dropped()] = static_cast<int32_t>(assigned - total);
  }
  if (padded && threadIdx.x == 0) meta[m.offset(G)] = static_cast<int32_t>(G * cap);
  for (int64_t g = g0; g < g1; ++g) {
    meta[m.offset(g)] = static_cast<int32_t>(padded ? g * cap : run);
    run += count[g];
  }
}

static __global__ void assign_slots(const uint64_t* keys, const int32_t* values, int64_t n, int shift,
                                    const int32_t* starts, const int32_t* capacity, int32_t* slot) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= n) return;
  const int64_t rank = p - starts[keys[p] >> shift];
  slot[values[p]] = rank < *capacity ? static_cast<int32_t>(rank) : -1;
}

namespace {

// Allocates a route's tensors on ctx; offset is a view of meta (G+4).
Tensor init_route(Ctx& ctx, Route& r, int64_t N, int64_t k, int64_t G) {
  SY_CHECK(N * k < INT_MAX, "route of " << N << " x " << k << " assignments (at most 2^31 - 1)");
  r.num_items = N, r.k = k, r.num_groups = G;
  r.budget_dropped = 0;
  r.padded = false;
  r.group = Tensor::empty({N * k}, DType::i32, ctx);
  r.weight = Tensor::empty({N * k}, DType::f32, ctx);
  r.slot = Tensor::empty({N * k}, DType::i32, ctx);
  r.count = Tensor::empty({G}, DType::i32, ctx);
  Tensor meta = Tensor::empty({Meta{G}.size()}, DType::i32, ctx);
  r.offset = meta.rows(0, G + 1);
  return meta;
}

// The one device-to-host copy of a route: host_offset, capacity, assigned, dropped.
void read_meta(Ctx& ctx, Route& r, const Tensor& meta, bool read_capacity) {
  const Meta m{r.num_groups};
  const std::vector<int32_t> h = download(ctx, meta.data<int32_t>(), m.size());
  r.host_offset.assign(h.begin(), h.begin() + r.num_groups + 1);
  if (read_capacity) r.capacity = h[m.capacity()];
  r.assigned = h[m.assigned()];
  r.dropped = h[m.dropped()];
}

}  // namespace

void tokens_choose_by(Ctx& ctx, Route& r, int64_t N, int64_t G_run, const TokensChooseParams& p,
                      const Chooser& choose) {
  const int64_t k = p.k;
  const int64_t run = p.segment > 0 ? p.segment : N, G = run > 0 ? N / run * G_run : G_run;  // all runs' groups
  const int64_t n = N * k;
  Tensor meta = init_route(ctx, r, N, k, G);
  const int jbits = p.priority == SlotPriority::token_order ? 0 : bits_for(k);
  const int sbits = p.priority == SlotPriority::score ? 32 : 0;
  const int shift = jbits + sbits, end_bit = bits_for(G) + shift;
  SY_CHECK(end_bit <= 64, "tokens_choose: " << G << " groups x top-" << k << " do not fit the 64-bit slot key");
  if (!p.dropless)
    r.capacity = tokens_choose_capacity(p, run, G_run);

  // 1. the choice.
  Tensor top = Tensor::empty({N}, DType::f32, ctx);
  choose(r.group.data<int32_t>(), r.weight.data<float>(), top.data<float>());
  // The slots' order: the caller's keys where given, else the top scores.
  const float* order = p.priority_keys ? p.priority_keys->data<float>() : top.data<float>();

  // 2. the slot sort.
  Tensor keys = Tensor::empty({2 * n}, DType::i64, ctx);
  Tensor values = Tensor::empty({2 * n}, DType::i32, ctx);
  auto* k_in = reinterpret_cast<uint64_t*>(keys.data<int64_t>());
  int32_t* v_in = values.data<int32_t>();
  slot_keys<<<grid_for(n), kBlock, 0, stream(ctx)>>>(r.group.data<int32_t>(), order, n,
                                                     static_cast<int>(k), jbits, sbits > 0, k_in, v_in);
  CUDA_CHECK(cudaGetLastError());
  radix_sort_pairs(ctx, k_in, k_in + n, v_in, v_in + n, n, 0, end_bit);

  // 3. runs, counts, offsets, slots; then the one copy back.
  Tensor starts = Tensor::empty({G + 1}, DType::i32, ctx);
  segment_starts(ctx, k_in + n, n, shift, G, starts.data<int32_t>());
  route_counts<<<1, kBlock, 0, stream(ctx)>>>(starts.data<int32_t>(), G, n, p.dropless ? -1 : r.capacity,
                                              p.padded, r.count.data<int32_t>(), meta.data<int32_t>());
  CUDA_CHECK(cudaGetLastError());
  assign_slots<<<grid_for(n), kBlock, 0, stream(ctx)>>>(k_in + n, v_in + n, n, shift, starts.data<int32_t>(),
                                                        meta.data<int32_t>() + Meta{G}.capacity(),
                                                        r.slot.data<int32_t>());
  CUDA_CHECK(cudaGetLastError());
  if (p.padded)
    set_padded_host_part(r);
  else
    read_meta(ctx, r, meta, p.dropless);
}

namespace {
// Step 1: the top-k kernel over probs, or (logits given) the gating kernel
// that writes probs from them (or not: probs undefined) as it chooses;
// group, weight (N*k), top (N, or null: not written). Up to 128 groups and
// k <= 8 one kernel with the row in registers; otherwise the probabilities
// go through memory (scratch where none is kept): router_scores' then
// topk_kernel, or past 128 groups gate_topk_kernel.
template <int L, int NV>
void launch_regs(Ctx& ctx, const TopkArgs& ta, const float* l, bool sm, bool vec) {
  const unsigned grid = grid_for(ta.N, rows_per_block<L>());
  const int k = ta.k;
  if (k <= 1)
    gate_topk_regs<L, NV, 1><<<grid, kBlock, 0, stream(ctx)>>>(ta, l, sm, vec);
  else if (k <= 2)
    gate_topk_regs<L, NV, 2><<<grid, kBlock, 0, stream(ctx)>>>(ta, l, sm, vec);
  else if (k <= 4)
    gate_topk_regs<L, NV, 4><<<grid, kBlock, 0, stream(ctx)>>>(ta, l, sm, vec);
  else
    gate_topk_regs<L, NV, 8><<<grid, kBlock, 0, stream(ctx)>>>(ta, l, sm, vec);
}

void launch_choice(Ctx& ctx, Tensor* probs, const Tensor* logits, ScoreFn fn, const TokensChooseParams& p,
                   int32_t* group, float* weight, float* top) {
  SY_CHECK(!p.group_limit.on(), "the CUDA top-k got a group limit: ops/routing.cc applies it (limit_groups) first");
  const Tensor& scores = logits ? *logits : *probs;
  const int64_t N = scores.dim(0), G = scores.dim(1);
  if (N == 0) return;
  const bool kept = probs && probs->defined();
  const float* keys = p.selection_keys ? p.selection_keys->data<float>() : nullptr;
  const float* bias = p.selection_bias ? p.selection_bias->data<float>() : nullptr;
  TopkArgs ta{kept ? probs->data<float>() : nullptr, keys, bias, group, weight, top, N, static_cast<int>(G), p.k,
              p.renormalize, p.segment};
  const bool sm = fn == ScoreFn::softmax;
  if (logits && G <= 128 && p.k <= 8) {  // the row in registers (row_layout, as router_scores)
    const float* l = logits->data<float>();
    const bool vec = row_vec(G, {l, ta.probs, keys, bias});
    with_row_layout(G, [&](auto L, auto NV) { launch_regs<decltype(L)::value, decltype(NV)::value>(ctx, ta, l, sm, vec); });
    CUDA_CHECK(cudaGetLastError());
    return;
  }
  Tensor scratch;
  if (logits && !kept) {
    scratch = Tensor::empty({N, G}, DType::f32, ctx);
    ta.probs = scratch.data<float>();
  }
  if (logits && G <= 128) {  // k > 8: router_scores' bits, then the top-k from memory
    Tensor out = kept ? *probs : scratch;
    cuda::router_scores(ctx, out, *logits, fn);
    topk_kernel<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(ta);
  } else if (logits) {
    gate_topk_kernel<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(ta, logits->data<float>(), sm);
  } else {
    topk_kernel<<<grid_for(N, kWarps), kBlock, 0, stream(ctx)>>>(ta);
  }
  CUDA_CHECK(cudaGetLastError());
}

// tokens_choose's steps with step 1 launch_choice's.
void choose_top_k(Ctx& ctx, Route& r, Tensor* probs, const Tensor* logits, ScoreFn fn,
                  const TokensChooseParams& p) {
  const Tensor& scores = logits ? *logits : *probs;
  tokens_choose_by(ctx, r, scores.dim(0), scores.dim(1), p, [&](int32_t* group, float* weight, float* top) {
    launch_choice(ctx, probs, logits, fn, p, group, weight, top);
  });
}
}  // namespace

void tokens_gate(Ctx& ctx, Tensor& group, Tensor& weight, Tensor& probs, const Tensor& logits, ScoreFn fn,
                 const TokensChooseParams& p) {
  launch_choice(ctx, &probs, &logits, fn, p, group.data<int32_t>(), weight.data<float>(), /*top=*/nullptr);
}

void tokens_choose(Ctx& ctx, Route& r, const Tensor& probs, const TokensChooseParams& p) {
  choose_top_k(ctx, r, const_cast<Tensor*>(&probs), nullptr, ScoreFn::softmax, p);
}

void tokens_choose_logits(Ctx& ctx, Route& r, Tensor& probs, const Tensor& logits, ScoreFn fn,
                          const TokensChooseParams& p) {
  choose_top_k(ctx, r, &probs, &logits, fn, p);
}

// ---- groups_choose --------------------------------------------------------


// The column select of ops/cuda/column_select.h: one thread a unit
// (segment, tile, group; g fastest), blocks of one warp (each thread's 256
// 16-bit bins in shared memory, 16 KiB a block).
static __global__ void colsel_start(colsel::Column* cols, int64_t n, int32_t per) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c < n) cols[c] = {0u, per};
}

// Pass p's bins: thread l's bin b at h[b * 32 + l] (its own bank pair),
// then out as H[b * units + u].
static __global__ void __launch_bounds__(32) colsel_histogram(const float* scores, colsel::Shape s,
                                                             const colsel::Column* cols, int pass, uint16_t* H) {
  __shared__ uint16_t h[colsel::kBins * 32];
  const int lane = threadIdx.x;
  const int64_t u = blockIdx.x * int64_t{32} + lane;
  if (u >= s.units()) return;  // (each thread reads and writes its own bins only: no barrier)
  const colsel::Unit w = colsel::unit_of(s, u);
  for (int b = 0; b < colsel::kBins; ++b) h[b * 32 + lane] = 0;
  colsel::tile_histogram(scores, s, w.seg, w.t, w.g, pass, cols[w.seg * s.G + w.g], h + lane, 32);
  for (int b = 0; b < colsel::kBins; ++b) H[b * s.units() + u] = h[b * 32 + lane];
}

// R[b * columns + c] = column c's bin b over its tiles (one thread each;
// adjacent threads, adjacent columns: coalesced reads of H).
static __global__ void colsel_totals(const uint16_t* H, colsel::Shape s, uint32_t* R) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= colsel::kBins * s.columns()) return;
  const int64_t b = e / s.columns(), c = e % s.columns();
  R[e] = colsel::bin_total(H, s, c / s.G, c % s.G, static_cast<int>(b));
}

// Pass p's digit, one warp a column: lane l holds bins 8l..8l+7, an
// exclusive scan of the lanes' sums gives each the keys below its bins, and
// the lane whose bins reach `need` settles the column.
static __global__ void colsel_digit(const uint32_t* R, colsel::Shape s, colsel::Column* cols, int pass) {
  constexpr int kPer = colsel::kBins / 32;
  const int64_t c = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (c >= s.columns()) return;  // (the whole warp)
  uint32_t counts[kPer], sum = 0;
#pragma unroll
  for (int j = 0; j < kPer; ++j) sum += counts[j] = R[(lane * kPer + j) * s.columns() + c];
  uint32_t incl = sum;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  colsel::Column col = cols[c];
  __syncwarp();  // every lane has read the column before one writes it
  if (colsel::settle_digit(col, counts, lane * kPer, kPer, incl - sum, pass)) cols[c] = col;
}

static __global__ void colsel_counts(const float* scores, colsel::Shape s, const colsel::Column* cols,
                                     uint32_t* less, uint32_t* equal) {
  const int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (u >= s.units()) return;
  const colsel::Unit w = colsel::unit_of(s, u);
  colsel::tile_counts(scores, s, w.seg, w.t, w.g, cols[w.seg * s.G + w.g].prefix, less[u], equal[u]);
}

static __global__ void colsel_mark(const float* scores, colsel::Shape s, const colsel::Column* cols,
                                   const uint32_t* less, const uint32_t* equal, int32_t* group, float* weight,
                                   int32_t* slot) {
  const int64_t u = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (u >= s.units()) return;
  const colsel::Unit w = colsel::unit_of(s, u);
  colsel::tile_mark(scores, s, w.seg, w.t, w.g, cols[w.seg * s.G + w.g], less, equal, group, weight, slot);
}

static __global__ void fill_counts(int32_t* count, int32_t* offset, int64_t G, int64_t per_group) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g > G) return;
  if (g < G) count[g] = static_cast<int32_t>(per_group);
  offset[g] = static_cast<int32_t>(g * per_group);
}

void groups_choose(Ctx& ctx, Route& r, const Tensor& scores, int64_t capacity, int64_t segment, bool own_groups) {
  const int64_t N = scores.dim(0), G = scores.dim(1);
  const int64_t S = segment > 0 ? segment : N;
  const int64_t tile = colsel::tile_items(N, G, S);
  const colsel::Shape cs{G, S, S > 0 ? N / S : 0, std::min(capacity, S), tile, (S + tile - 1) / tile,
                         own_groups && segment > 0};
  const int64_t groups = cs.own ? cs.columns() : G;  // the route's
  Tensor meta = init_route(ctx, r, N, G, groups);
  r.capacity = cs.own ? cs.per : cs.per * cs.segments;
  CUDA_CHECK(cudaMemsetAsync(r.group.raw(), 0xff, r.group.nbytes(), stream(ctx)));  // -1: unused
  CUDA_CHECK(cudaMemsetAsync(r.weight.raw(), 0, r.weight.nbytes(), stream(ctx)));
  if (N * G > 0) {
    const int64_t cols_n = cs.columns(), units = cs.units();
    Tensor cols = Tensor::empty({cols_n * 2}, DType::i32, ctx);  // (prefix, need) a column
    Tensor bins = Tensor::empty({(colsel::kBins * units + 1) / 2}, DType::i32, ctx);  // 16-bit
    Tensor totals = Tensor::empty({colsel::kBins * cols_n}, DType::i32, ctx);
    Tensor counts = Tensor::empty({2 * units}, DType::i32, ctx);
    auto* col = reinterpret_cast<colsel::Column*>(cols.data<int32_t>());
    auto* H = reinterpret_cast<uint16_t*>(bins.data<int32_t>());
    auto* R = reinterpret_cast<uint32_t*>(totals.data<int32_t>());
    auto* less = reinterpret_cast<uint32_t*>(counts.data<int32_t>());
    const unsigned unit_blocks = grid_for(units, 32);
    colsel_start<<<grid_for(cols_n), kBlock, 0, stream(ctx)>>>(col, cols_n, static_cast<int32_t>(cs.per));
    CUDA_CHECK(cudaGetLastError());
    for (int pass = 0; pass < colsel::kPasses; ++pass) {
      colsel_histogram<<<unit_blocks, 32, 0, stream(ctx)>>>(scores.data<float>(), cs, col, pass, H);
      CUDA_CHECK(cudaGetLastError());
      colsel_totals<<<grid_for(colsel::kBins * cols_n), kBlock, 0, stream(ctx)>>>(H, cs, R);
      CUDA_CHECK(cudaGetLastError());
      colsel_digit<<<grid_for(cols_n, kWarps), kBlock, 0, stream(ctx)>>>(R, cs, col, pass);
      CUDA_CHECK(cudaGetLastError());
    }
    colsel_counts<<<grid_for(units), kBlock, 0, stream(ctx)>>>(scores.data<float>(), cs, col, less, less + units);
    CUDA_CHECK(cudaGetLastError());
    colsel_mark<<<grid_for(units), kBlock, 0, stream(ctx)>>>(scores.data<float>(), cs, col, less, less + units,
                                                           r.group.data<int32_t>(), r.weight.data<float>(),
                                                           r.slot.data<int32_t>());
    CUDA_CHECK(cudaGetLastError());
  }
  fill_counts<<<grid_for(groups + 1), kBlock, 0, stream(ctx)>>>(r.count.data<int32_t>(), r.offset.data<int32_t>(),
                                                                groups, r.capacity);
  CUDA_CHECK(cudaGetLastError());
  // Every group holds `capacity` rows: the host part needs no copy back.
  r.host_offset.resize(groups + 1);
  for (int64_t g = 0; g <= groups; ++g) r.host_offset[g] = static_cast<int32_t>(g * r.capacity);
  r.assigned = r.capacity * groups;
  r.dropped = 0;
}

// ---- threshold_route ------------------------------------------------------

// One block: item i is kept when score > tau; its slot is the number of kept
// items before it (chunked exclusive scan: exact integers).
static __global__ void threshold_kernel(const float* scores, int64_t N, float tau, int32_t* group, float* weight,
                                        int32_t* slot, int32_t* count, int32_t* meta) {
  __shared__ int64_t scratch[kBlock];
  const int64_t per = (N + blockDim.x - 1) / blockDim.x;
  const int64_t i0 = min(N, threadIdx.x * per), i1 = min(N, i0 + per);
  int64_t local = 0;
  for (int64_t i = i0; i < i1; ++i) local += scores[i] > tau;
  int64_t total;
  int64_t run = block_exclusive_sum(local, scratch, &total);
  if (threadIdx.x == 0) {
    const Meta m{1};
    count[0] = static_cast<int32_t>(total);
    meta[m.offset(0)] = 0;
    meta[m.offset(1)] = static_cast<int32_t>(total);
    meta[m.capacity()] = static_cast<int32_t>(N);
    meta[m.assigned()] = static_cast<int32_t>(total);
    meta[m.dropped()] = 0;
  }
  for (int64_t i = i0; i < i1; ++i) {
    const bool kept = scores[i] > tau;
    group[i] = kept ? 0 : -1;
    weight[i] = kept ? scores[i] : 0.f;
    slot[i] = kept ? static_cast<int32_t>(run++) : -1;
  }
}

void threshold_route(Ctx& ctx, Route& r, const Tensor& scores, float tau) {
  const int64_t N = scores.dim(0);
  Tensor meta = init_route(ctx, r, N, 1, 1);
  r.capacity = N;
  threshold_kernel<<<1, kBlock, 0, stream(ctx)>>>(scores.data<float>(), N, tau, r.group.data<int32_t>(),
                                                  r.weight.data<float>(), r.slot.data<int32_t>(),
                                                  r.count.data<int32_t>(), meta.data<int32_t>());
  CUDA_CHECK(cudaGetLastError());
  read_meta(ctx, r, meta, false);
}

// ---- apply_budget ---------------------------------------------------------

// Host-staged for now: the route's group, slot, count and offset and the
// scores come to the host, the CPU reference decides (so the decisions are
// the CPU's exactly), and slot, count and offset go back: two more
// synchronisations per routed layer. A kernel (sort the kept assignments by
// (score, -a), a prefix sum of their costs, the cut, a per-group compaction of
// the slots; the causal variant a scan per run with per-item fixes) is left
// for when the GPU path is measured.
void apply_budget(Ctx& ctx, Route& r, const Tensor& scores, const BudgetParams& p) {
  // (Copies that wait for ctx's stream alone, where the route's writers are:
  // host_ctx() would wait for the whole device, the gradient reducer's side
  // stream too, where a replayed forward, train.recompute, runs this.)
  Ctx host = host_ctx_on(ctx);
  Route h;
  h.num_items = r.num_items, h.k = r.k, h.num_groups = r.num_groups, h.capacity = r.capacity;
  h.group = r.group.to(host);
  h.slot = r.slot.to(host);
  h.count = r.count.to(host);
  h.offset = r.offset.to(host);
  h.host_offset = r.host_offset;
  const Tensor hs = scores.to(host);
  cpu::apply_budget(host, h, hs, p);
  if (h.budget_dropped == 0) return;
  r.slot.copy_from(h.slot, ctx);
  r.count.copy_from(h.count, ctx);
  r.offset.copy_from(h.offset, ctx);
  r.host_offset = h.host_offset;
  r.budget_dropped += h.budget_dropped;
}

void pad_to_largest(Ctx& ctx, Route& r, int64_t multiple) {
  set_largest_padded_host_part(r, multiple);
  r.offset = upload(ctx, r.host_offset);  // (queued: the host does not wait)
}

// ---- route_weights_backward, update_balance_bias --------------------------

static __global__ void route_weights_backward_kernel(float* dprobs, const float* dweight, const float* probs,
                                                     const int32_t* group, int64_t N, int64_t k, int64_t G,
                                                     bool renormalized) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N) return;
  const int64_t a0 = i * k;
  if (!renormalized) {
    for (int64_t j = 0; j < k; ++j)
      if (group[a0 + j] >= 0) dprobs[i * G + group[a0 + j]] += dweight[a0 + j];
    return;
  }
  // w_j = p_j / S:  dp_j = dw_j / S - sum_l dw_l p_l / S^2 (no FMA: the CPU's rounding)
  float S = 0.f, dot = 0.f;
  for (int64_t j = 0; j < k; ++j) {
    if (group[a0 + j] < 0) continue;
    const float pj = probs[i * G + group[a0 + j]];
    S += pj;
    dot = __fadd_rn(dot, __fmul_rn(dweight[a0 + j], pj));
  }
  if (S <= 0.f) return;
  for (int64_t j = 0; j < k; ++j)
    if (group[a0 + j] >= 0) dprobs[i * G + group[a0 + j]] += dweight[a0 + j] / S - dot / (S * S);
}

void route_weights_backward(Ctx& ctx, Tensor& dprobs, const Tensor& dweight, const Tensor& probs, const Route& r,
                            bool renormalized) {
  if (r.num_items == 0) return;
  route_weights_backward_kernel<<<grid_for(r.num_items), kBlock, 0, stream(ctx)>>>(
      dprobs.data<float>(), dweight.data<float>(), probs.data<float>(), r.group.data<int32_t>(), r.num_items, r.k,
      r.num_groups, renormalized);
  CUDA_CHECK(cudaGetLastError());
}

// One block: each group's load summed over the M rows in row order, the mean
// of those in group order (thread 0: the CPU's sums), then
// bias_g += rate * sign(mean - load_g).
static __global__ void balance_bias_kernel(float* bias, const double* rows, int64_t M, int64_t G, float rate) {
  __shared__ double mean;
  auto load = [&](int64_t g) {
    double s = 0;
    for (int64_t m = 0; m < M; ++m) s += rows[m * G + g];
    return s;
  };
  if (threadIdx.x == 0) {
    double s = 0;
    for (int64_t g = 0; g < G; ++g) s += load(g);
    mean = s / G;
  }
  __syncthreads();
  for (int64_t g = threadIdx.x; g < G; g += blockDim.x) {
    const double e = mean - load(g);
    bias[g] += rate * static_cast<float>((e > 0) - (e < 0));
  }
}

void update_balance_bias(Ctx& ctx, Tensor& bias, const Tensor& load, float rate) {
  const int64_t G = bias.numel();
  if (G == 0) return;
  balance_bias_kernel<<<1, kBlock, 0, stream(ctx)>>>(bias.data<float>(), load.data<double>(), load.numel() / G, G,
                                                     rate);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace sy::ops::cuda
