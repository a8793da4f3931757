// Dense causal attention on CUDA, and its sliding-window form:
// FlashAttention-2 (Dao 2023) style kernels behind ops::attention_forward /
// attention_backward (equations, shapes, the window, the head subset and the
// saved lse in ops/attention.h).
//
// Forward, one block per (query tile, head, sequence): the Q tile stays in
// shared memory; K and V tiles stream through a two-stage cp.async pipeline
// up to the causal diagonal (tiles above it are never loaded); scores, the
// online softmax (running max m and sum l per row) and O live in registers in
// fp32; at the end O / l and lse = m + log l are written.
//
// Backward, without atomics, in three launches:
//   delta     Delta_t = dout_t . out_t per (row, head), a group of lanes
//             each (one 16-byte load of dout and of out a lane)
//   dk/dv     one block per key tile, looping over the query tiles at or
//             after the diagonal: recomputes P^T = exp(K Q^T / sqrt(D) - lse),
//             dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - Delta),
//             dK += dS^T Q; each key row's gradient is owned by one thread
//   dq        one block per query tile, looping over the key tiles up to the
//             diagonal: P, dP and dS again, dQ += dS K
// Every output element has one owner that adds its terms in a fixed order,
// so two runs are bitwise equal whatever the SM count or the scheduling.
// The price is the dq launch's S and dP again: 7 GEMM passes where
// FlashAttention-2's backward, adding dQ from the dk/dv blocks with atomics,
// makes 5 (the backward takes ~3.5x the forward, as the count says). Adding
// dQ from the dk/dv blocks without atomics needs each query tile's adds in
// a fixed order of key tiles; the one order that does not serialise the key
// tiles (descending: the diagonal's first, each block one tile behind the
// next) needs each key tile dispatched after the one above it, so the
// heaviest blocks (the first key tiles) start last and leave a tail of about
// a sequence's query tiles: ~25% at T 4k-16k with 64-row tiles, about what
// the two passes cost; so not done.
//
// Two families with the same tiling and loops:
//   bf16  tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), warps
//         own 16-row slices of a tile, operands from shared memory through
//         ldmatrix; P and dS are rounded to bf16 between the two GEMMs as in
//         FlashAttention (class B against the fp32 CPU).
//   f32   plain fp32 FMAs (class F), 256 threads as 16 x 16, each a small
//         register tile; P / dS pass through shared memory.
//
// Ragged tiles: rows past the sequence are zero-filled on load (cp.async
// with a source size of 0) and masked to -inf (forward) or 0 (backward);
// rows past the end are never written. Causality: a tile is skipped when
// it lies wholly above the diagonal and masked element by element only when
// it straddles it (or is ragged).
//
// Geometry and masks: every kernel asks `sequence(g, b)` for its rows
// (dense: b * T, T; varlen: from the segment offsets g.seg, laid out by
// ops/cuda/attention_varlen.h) and binds its Mask to them; the masks, the tile
// ranges each loop visits, the warps' skips and the tiles needing the element
// mask are ops/cuda/attention_tiles.h's host-tested functions. CausalMask and
// WindowMask (the sliding window: its loops start at the first key tile a
// query tile's window reaches, so w keys cost ~T w pairs whatever T is) serve
// ops::attention_forward / backward; MemberMask (causal between flagged
// query and key rows of a packed segment) serves the varlen entry points,
// the tiled path for routed attention's clusters. A query with no allowed
// key gets o = 0, lse = -inf. The grid's head dimension covers the computed
// heads only.
//
// This header holds the kernels and their launchers, in an anonymous
// namespace: ops/cuda/attention.cu instantiates them for the dense masks
// (ops::attention_forward / backward), ops/cuda/attention_varlen.cu for
// MemberMask (the varlen entry points), so the two compile side by side.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/cuda_check.h"
#include "ops/attention.h"
#include "ops/cuda/attention_tiles.h"
#include "ops/cuda/mma.cuh"
#include "ops/cuda/attention_varlen.h"
#include "ops/cuda/common.cuh"

namespace sy::ops::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// ---- geometry: where a head's rows are ---------------------------------

struct Geom {
  int B, H, T;     // varlen: B segments, T at least the longest
  int heads;       // heads [0, heads) are computed (ops/attention.h: AttentionShape::heads)
  const int32_t* seg = nullptr;  // varlen: segment b is rows [seg[b], seg[b+1]); null: dense
  int64_t rows = 0;              // varlen: rows of all segments
  const attn::TileItem* work = nullptr;  // varlen, per launch: the work list of its tile (attn::tile_work)
  attn::TileItem* scratch = nullptr;     // varlen: room for two work lists of items_cap items each, device
  int64_t items_cap = 0;                 // varlen: >= the grid's bound at any tile of 16 rows or more
  int64_t C;       // model width: q of head h at column h*D, k at C + h*D, v at 2C + h*D
  int64_t ld_qkv;  // elements between rows of qkv and dqkv (3C)
  int64_t ld_out;  // elements between rows of out and dout (C)
  float scale;     // 1 / sqrt(D)
};

struct Seq {
  int64_t row0;  // first row of the sequence in the (rows, 3C) / (rows, C) buffers
  int len;
};

// Dense: B sequences of T tokens. Varlen: row0 = seg[b], len = seg[b+1] - row0.
__device__ __forceinline__ Seq sequence(const Geom& g, int b) {
  if (g.seg) return {g.seg[b], g.seg[b + 1] - g.seg[b]};
  return {int64_t(b) * g.T, g.T};
}
// This block's (sequence, tile): attn::tile_work on the launch's grid.
__device__ __forceinline__ attn::TileWork block_work(const Geom& g, bool last_first) {
  return attn::tile_work(g.work, blockIdx.x, gridDim.x, blockIdx.z, last_first);
}
// lse and Delta of (sequence b, head h) start here: dense (B, H, T), varlen
// (H, rows) - row r of head h at h * rows + r.
__device__ __forceinline__ int64_t stat_base(const Geom& g, int b, int h) {
  if (g.seg) return int64_t(h) * g.rows + g.seg[b];
  return (int64_t(b) * g.H + h) * g.T;
}
// The same for a packed row (the Delta kernel's view).
__device__ __forceinline__ int64_t stat_index(const Geom& g, int64_t row, int h) {
  if (g.seg) return int64_t(h) * g.rows + row;
  return (row / g.T * g.H + h) * g.T + row % g.T;
}

// The masks, the tile ranges the loops visit, the warps' skips and the
// tiles needing the element mask: ops/cuda/attention_tiles.h (host-tested).
using attn::CausalMask;
using attn::WindowMask;
using attn::key_tiles;
using attn::keys_seen_by;
using attn::needs_mask;
using attn::query_tiles;
using attn::rows_see_keys;

// ---- PTX wrappers ------------------------------------------------------

using mma::a_addr;
using mma::b_addr;
using mma::gemm_abt;
using mma::gemm_rbt;
using mma::load_a;
using mma::mma_k_slice;
using mma::ldmatrix_x4;
using mma::mma_bf16;
using mma::pack_bf16;
using mma::smem_addr;

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (src
// must still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}


// 2^x; 2^-inf = 0.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Rows [r0, r0 + ROWS) x D of a (len, ld) matrix into shared memory with row
// pitch LDS elements, 16 bytes per thread and step; rows >= len zero-filled.
template <class T, int ROWS, int D, int LDS, int NTHREADS>
__device__ __forceinline__ void load_rows(T* dst, const T* src, int64_t ld, int r0, int len) {
  constexpr int kPer = 16 / sizeof(T), kChunks = D / kPer;
  for (int c = threadIdx.x; c < ROWS * kChunks; c += NTHREADS) {
    const int r = c / kChunks, col = (c % kChunks) * kPer, gr = r0 + r;
    const bool valid = gr < len;
    cp_async16(dst + r * LDS + col, src + int64_t(valid ? gr : 0) * ld + col, valid);
  }
}

// ---- Delta = rowsum(dO * O) ---------------------------------------------
//
// A group of G = D / E lanes per (row, head), E the elements in 16 bytes
// (8 bf16, 4 fp32): one 16-byte load of dO and of O a lane, the lane's
// products added in index order, then the group's butterfly (offsets below
// G stay within it). Before, a whole warp took a (row, head), 2- or 4-byte
// loads a lane, three quarters of the lanes idle at D 64 in bf16.
__device__ __forceinline__ float dot16(const uint4& a, const uint4& b, const bf16*) {
  const __nv_bfloat162* x = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 u = __bfloat1622float2(x[i]), v = __bfloat1622float2(y[i]);
    s += u.x * v.x;
    s += u.y * v.y;
  }
  return s;
}
__device__ __forceinline__ float dot16(const uint4& a, const uint4& b, const float*) {
  const float4 x = *reinterpret_cast<const float4*>(&a), y = *reinterpret_cast<const float4*>(&b);
  float s = x.x * y.x;
  s += x.y * y.y;
  s += x.z * y.z;
  s += x.w * y.w;
  return s;
}

template <class T, int D>
__global__ void attention_delta_kernel(const T* dout, const T* out, float* delta, Geom g) {
  constexpr int E = 16 / sizeof(T), G = D / E;
  static_assert(D % E == 0 && G >= 1 && G <= 32 && (G & (G - 1)) == 0, "a power-of-two group of lanes a row");
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t rows = g.seg ? g.rows : int64_t(g.B) * g.T;
  const int64_t item = t / G;  // (row, head); the group's lanes share it
  const int part = static_cast<int>(t % G);
  const bool live = item < rows * g.heads;
  float s = 0.f;
  int64_t row = 0;
  int h = 0;
  if (live) {
    row = item / g.heads;  // b * T + t (dense), the packed row (varlen)
    h = static_cast<int>(item % g.heads);
    const int64_t off = row * g.ld_out + int64_t(h) * D + part * E;
    s = dot16(*reinterpret_cast<const uint4*>(dout + off), *reinterpret_cast<const uint4*>(out + off),
              static_cast<const T*>(nullptr));
  }
  s = warp_sum<float, G>(s);  // (every lane of the warp takes part; a dead group adds zeros)
  if (live && part == 0) delta[stat_index(g, row, h)] = s;
}

// ======================================================================
// bf16 tensor-core kernels (fragment layouts and ldmatrix addresses:
// ops/cuda/mma.cuh).
// ======================================================================

// The spans (attn::row_span) of this thread's C-fragment rows row0 + 16 mt
// + 8 r, taken once a tile, or none where the tile needs no element mask.
template <bool KEYS_OWN, int MT, class Mask>
__device__ __forceinline__ void fragment_row_spans(attn::Span (&sp)[MT][2], const Mask& mask, bool masked, int row0) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) sp[mt][r] = masked ? attn::row_span(mask, KEYS_OWN, row0 + mt * 16 + 8 * r) : attn::Span{};
}

// acc[MT][N/8] += P * B where P (rows of this warp x K) is in registers as C
// fragments p[MT][K/8] (fp32, rounded to bf16 here) and B is smem [K][N]
// row-major (e.g. O += P V, dK += dS^T Q).
template <int MT, int N, int K, int LD>
__device__ __forceinline__ void gemm_pb(float (&acc)[MT][N / 8][4], const float (&p)[MT][K / 8][4], const bf16* sb,
                                        int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      a[mt][0] = pack_bf16(p[mt][2 * kk][0], p[mt][2 * kk][1]);
      a[mt][1] = pack_bf16(p[mt][2 * kk][2], p[mt][2 * kk][3]);
      a[mt][2] = pack_bf16(p[mt][2 * kk + 1][0], p[mt][2 * kk + 1][1]);
      a[mt][3] = pack_bf16(p[mt][2 * kk + 1][2], p[mt][2 * kk + 1][3]);
    }
    mma_k_slice<MT, N, LD, /*KROWS=*/true>(acc, a, sb, kk, lane);
  }
}

template <int M, int N, int K>
__device__ __forceinline__ void zero(float (&acc)[M][N][K]) {
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int j = 0; j < N; ++j)
#pragma unroll
      for (int e = 0; e < K; ++e) acc[i][j][e] = 0.f;
}

// Tile shapes of the bf16 kernels. WARPS warps each own MT * 16 rows of the
// block's tile; BN is the other side of the tile a block loops over.
// QREG (forward): each warp keeps its Q fragments in registers for the whole
// loop instead of reading them from shared memory every key tile.
template <int D_, int WARPS_, int MT_, int BN_, bool QREG_ = false>
struct TcCfg {
  static constexpr int D = D_, WARPS = WARPS_, MT = MT_, BN = BN_;
  static constexpr bool QREG = QREG_;
  static constexpr int THREADS = WARPS * 32, BM = WARPS * MT * 16, LD = D + 8;
  static_assert(D % 16 == 0 && BN % 16 == 0, "mma k-slices and ldmatrix pairs of 16");
};

// Forward. Block: BM queries of (sequence, head blockIdx.y: block_work); the
// tiles with the most keys (the last) are launched first.
template <class Cfg, class Mask>
__global__ void __launch_bounds__(Cfg::THREADS) attention_fwd_bf16(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                                                                   float* __restrict__ lse, Geom g, Mask mask_) {
  constexpr int D = Cfg::D, MT = Cfg::MT, BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, NT = Cfg::THREADS;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // BM x LD
  bf16* sK = sQ + BM * LD;                   // 2 x BN x LD
  bf16* sV = sK + 2 * BN * LD;               // 2 x BN x LD

  const attn::TileWork w = block_work(g, true);
  if (w.b < 0) return;  // (varlen: past the work list)
  const int h = blockIdx.y, b = w.b;
  const Seq seq = sequence(g, b);
  const Mask mask = mask_.bind(b, seq.row0, seq.len);  // (varlen member flags: this segment's)
  const int q0 = w.tile * BM;
  if (q0 >= seq.len) return;
  const int D_ = D;
  const bf16* Q = qkv + seq.row0 * g.ld_qkv + int64_t(h) * D_;
  const bf16* K = Q + g.C;
  const bf16* V = Q + 2 * g.C;
  const attn::TileRange kt = key_tiles(mask, q0, BM, seq.len, BN);
  const int kt0 = kt.first, n_kt = kt.end;

  // (A tile of rows that see no key - a split segment's key rows - loads
  // nothing: it only writes o = 0, lse = -inf.)
  if (kt0 < n_kt) {
    load_rows<bf16, BM, D, LD, NT>(sQ, Q, g.ld_qkv, q0, seq.len);
    load_rows<bf16, BN, D, LD, NT>(sK, K, g.ld_qkv, kt0 * BN, seq.len);
    load_rows<bf16, BN, D, LD, NT>(sV, V, g.ld_qkv, kt0 * BN, seq.len);
  }
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int wm0 = warp * MT * 16;  // this warp's first row in the tile
  const float sl2 = g.scale * kLog2e;
  float o[MT][D / 8][4];
  zero(o);
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;
  uint32_t qf[Cfg::QREG ? MT : 1][Cfg::QREG ? D / 16 : 1][4];  // (QREG: this warp's Q fragments)

  for (int j = kt0; j < n_kt; ++j) {
    if (j + 1 < n_kt) {
      const int nb = (j + 1 - kt0) & 1;
      load_rows<bf16, BN, D, LD, NT>(sK + nb * BN * LD, K, g.ld_qkv, (j + 1) * BN, seq.len);
      load_rows<bf16, BN, D, LD, NT>(sV + nb * BN * LD, V, g.ld_qkv, (j + 1) * BN, seq.len);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* k_s = sK + ((j - kt0) & 1) * BN * LD;
    const bf16* v_s = sV + ((j - kt0) & 1) * BN * LD;
    if constexpr (Cfg::QREG)
      if (j == kt0) load_a<MT, D, LD>(qf, sQ, wm0, lane);  // (Q landed with the first key tile)

    // A warp whose rows all end before this key tile, or whose windows all
    // start after it, skips it (no __syncthreads inside).
    if (rows_see_keys(mask, q0 + wm0, MT * 16, j * BN, BN)) {
      float s[MT][BN / 8][4];
      zero(s);
      if constexpr (Cfg::QREG)
        gemm_rbt<MT, BN, D, LD>(s, qf, k_s, lane);
      else
        gemm_abt<MT, BN, D, LD>(s, sQ, wm0, k_s, lane);

      const int k0 = j * BN;
      const bool masked = needs_mask(mask, q0 + wm0, MT * 16, k0, BN, seq.len);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int q = q0 + wm0 + mt * 16 + gid + 8 * r;
          const attn::Span sp = masked ? mask.keys_of(q) : attn::Span{};  // (the row's keys, once a tile)
          // m is kept in the scores' own units (the scale is positive, so the
          // max commutes with it): each element then costs one FFMA into
          // log2 units, s sl2 - m sl2, not a multiply and a subtraction.
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              if (masked) {
                const int k = k0 + nt * 8 + 2 * tig + c;
                if (!(k < seq.len && attn::row_ok(mask, sp, false, q, k))) s[mt][nt][2 * r + c] = -INFINITY;
              }
              mx = fmaxf(mx, s[mt][nt][2 * r + c]);
            }
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          const float m_new = fmaxf(m[mt][r], mx);
          const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with no key yet
          const float alpha = exp2_approx((m[mt][r] - m_use) * sl2);
          const float m_l2 = m_use * sl2;
          float rs = 0;
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const float p = exp2_approx(fmaf(s[mt][nt][2 * r + c], sl2, -m_l2));
              s[mt][nt][2 * r + c] = p;
              rs += p;
            }
          l[mt][r] = l[mt][r] * alpha + rs;  // this thread's columns; summed over the quad at the end
          m[mt][r] = m_new;
#pragma unroll
          for (int dt = 0; dt < D / 8; ++dt) o[mt][dt][2 * r] *= alpha, o[mt][dt][2 * r + 1] *= alpha;
        }

      gemm_pb<MT, D, BN, LD>(o, s, v_s, lane);
    }
    __syncthreads();  // the buffer is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();  // (nothing in flight past the loop; with no key tile nothing was copied)

  const int64_t sb = stat_base(g, b, h);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = l[mt][r];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const int q = q0 + wm0 + mt * 16 + gid + 8 * r;
      if (q >= seq.len) continue;
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      bf16* orow = out + (seq.row0 + q) * g.ld_out + int64_t(h) * D_;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<__nv_bfloat162*>(orow + dt * 8 + 2 * tig) =
            __floats2bfloat162_rn(o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
      if (tig == 0) lse[sb + q] = sum > 0.f ? (m[mt][r] * sl2 + __log2f(sum)) * kLn2 : -INFINITY;
    }
}

// Backward, dK and dV. Block: BM keys (WARPS * MT * 16; warps own key rows)
// of (sequence, head blockIdx.y: block_work), looping over query tiles of BN
// from the first that can see the block's first key to the end.
template <class Cfg, class Mask>
__global__ void __launch_bounds__(Cfg::THREADS)
    attention_bwd_dkdv_bf16(const bf16* __restrict__ qkv, const bf16* __restrict__ dout, const float* __restrict__ lse,
                            const float* __restrict__ delta, bf16* __restrict__ dqkv, Geom g, Mask mask_) {
  constexpr int D = Cfg::D, MT = Cfg::MT, BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, NT = Cfg::THREADS;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);  // BM x LD
  bf16* sV = sK + BM * LD;                   // BM x LD
  bf16* sQ = sV + BM * LD;                   // 2 x BN x LD
  bf16* sO = sQ + 2 * BN * LD;               // 2 x BN x LD (dO)
  float* sL = reinterpret_cast<float*>(sO + 2 * BN * LD);  // 2 x BN: lse * log2(e)
  float* sDl = sL + 2 * BN;                                // 2 x BN: Delta

  const attn::TileWork w = block_work(g, false);
  if (w.b < 0) return;  // (varlen: past the work list)
  const int h = blockIdx.y, b = w.b;
  const Seq seq = sequence(g, b);
  const Mask mask = mask_.bind(b, seq.row0, seq.len);  // (varlen member flags: this segment's)
  const int k0 = w.tile * BM;  // the first key tiles see the most queries: launched first
  if (k0 >= seq.len) return;
  const int D_ = D;
  const int64_t hd = int64_t(h) * D_;
  const bf16* Q = qkv + seq.row0 * g.ld_qkv + hd;
  const bf16* K = Q + g.C;
  const bf16* V = Q + 2 * g.C;
  const bf16* dO = dout + seq.row0 * g.ld_out + hd;
  const int64_t sb = stat_base(g, b, h);
  const attn::TileRange qtr = query_tiles(mask, k0, BM, seq.len, BN);
  const int qt0 = qtr.first, n_qt = qtr.end;
  // Keys no query sees (past a varlen segment's key prefix): their rows of
  // dqkv get nothing, so leave before issuing any copy.
  if (qt0 >= n_qt) return;

  auto load_q_tile = [&](int qt, int buf) {
    load_rows<bf16, BN, D, LD, NT>(sQ + buf * BN * LD, Q, g.ld_qkv, qt * BN, seq.len);
    load_rows<bf16, BN, D, LD, NT>(sO + buf * BN * LD, dO, g.ld_out, qt * BN, seq.len);
    for (int i = threadIdx.x; i < BN; i += NT) {
      const int q = qt * BN + i;
      sL[buf * BN + i] = q < seq.len ? lse[sb + q] * kLog2e : 0.f;
      sDl[buf * BN + i] = q < seq.len ? delta[sb + q] : 0.f;
    }
  };
  load_rows<bf16, BM, D, LD, NT>(sK, K, g.ld_qkv, k0, seq.len);
  load_rows<bf16, BM, D, LD, NT>(sV, V, g.ld_qkv, k0, seq.len);
  if (qt0 < n_qt) load_q_tile(qt0, 0);
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int wm0 = warp * MT * 16;
  const float sl2 = g.scale * kLog2e;
  float dk[MT][D / 8][4], dv[MT][D / 8][4];
  zero(dk);
  zero(dv);

  for (int qt = qt0; qt < n_qt; ++qt) {
    const int buf = (qt - qt0) & 1;
    if (qt + 1 < n_qt) {
      load_q_tile(qt + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* q_s = sQ + buf * BN * LD;
    const bf16* o_s = sO + buf * BN * LD;
    const float* l_s = sL + buf * BN;
    const float* d_s = sDl + buf * BN;

    // A warp whose keys no query of this tile sees skips it.
    if (keys_seen_by(mask, k0 + wm0, MT * 16, qt * BN, BN)) {
      // P^T = exp(K Q^T / sqrt(D) - lse) (rows: this warp's keys; columns: the tile's queries)
      float p[MT][BN / 8][4];
      zero(p);
      gemm_abt<MT, BN, D, LD>(p, sK, wm0, q_s, lane);
      const int q0 = qt * BN;
      const bool masked = needs_mask(mask, q0, BN, k0 + wm0, MT * 16, seq.len);
      attn::Span sp[MT][2];  // (each key row's queries)
      fragment_row_spans<true>(sp, mask, masked, k0 + wm0 + gid);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int k = k0 + wm0 + mt * 16 + gid + 8 * (e >> 1), qi = nt * 8 + 2 * tig + (e & 1), q = q0 + qi;
            float x = exp2_approx(p[mt][nt][e] * sl2 - l_s[qi]);
            if (masked && !(q < seq.len && k < seq.len && attn::row_ok(mask, sp[mt][e >> 1], true, q, k))) x = 0.f;
            p[mt][nt][e] = x;
          }
      // dV += P^T dO
      gemm_pb<MT, D, BN, LD>(dv, p, o_s, lane);
      // dP^T = V dO^T, then dS^T = P^T (dP^T - Delta) in place
      float ds[MT][BN / 8][4];
      zero(ds);
      gemm_abt<MT, BN, D, LD>(ds, sV, wm0, o_s, lane);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) ds[mt][nt][e] = p[mt][nt][e] * (ds[mt][nt][e] - d_s[nt * 8 + 2 * tig + (e & 1)]);
      // dK += dS^T Q (scaled at the end)
      gemm_pb<MT, D, BN, LD>(dk, ds, q_s, lane);
    }
    __syncthreads();
  }

  bf16* dK = dqkv + seq.row0 * g.ld_qkv + g.C + hd;
  bf16* dV = dK + g.C;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int k = k0 + wm0 + mt * 16 + gid + 8 * r;
      if (k >= seq.len) continue;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int64_t off = int64_t(k) * g.ld_qkv + dt * 8 + 2 * tig;
        __nv_bfloat162* pk = reinterpret_cast<__nv_bfloat162*>(dK + off);
        __nv_bfloat162* pv = reinterpret_cast<__nv_bfloat162*>(dV + off);
        const float2 ok = __bfloat1622float2(*pk), ov = __bfloat1622float2(*pv);
        *pk = __floats2bfloat162_rn(ok.x + g.scale * dk[mt][dt][2 * r], ok.y + g.scale * dk[mt][dt][2 * r + 1]);
        *pv = __floats2bfloat162_rn(ov.x + dv[mt][dt][2 * r], ov.y + dv[mt][dt][2 * r + 1]);
      }
    }
}

// Backward, dQ. Block: BM queries (warps own query rows), looping over key
// tiles of BN up to the diagonal; the last query tiles (most keys) first.
template <class Cfg, class Mask>
__global__ void __launch_bounds__(Cfg::THREADS)
    attention_bwd_dq_bf16(const bf16* __restrict__ qkv, const bf16* __restrict__ dout, const float* __restrict__ lse,
                          const float* __restrict__ delta, bf16* __restrict__ dqkv, Geom g, Mask mask_) {
  constexpr int D = Cfg::D, MT = Cfg::MT, BM = Cfg::BM, BN = Cfg::BN, LD = Cfg::LD, NT = Cfg::THREADS;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // BM x LD
  bf16* sO = sQ + BM * LD;                   // BM x LD (dO)
  bf16* sK = sO + BM * LD;                   // 2 x BN x LD
  bf16* sV = sK + 2 * BN * LD;               // 2 x BN x LD

  const attn::TileWork w = block_work(g, true);
  if (w.b < 0) return;  // (varlen: past the work list)
  const int h = blockIdx.y, b = w.b;
  const Seq seq = sequence(g, b);
  const Mask mask = mask_.bind(b, seq.row0, seq.len);  // (varlen member flags: this segment's)
  const int q0 = w.tile * BM;
  if (q0 >= seq.len) return;
  const int D_ = D;
  const int64_t hd = int64_t(h) * D_;
  const bf16* Q = qkv + seq.row0 * g.ld_qkv + hd;
  const bf16* K = Q + g.C;
  const bf16* V = Q + 2 * g.C;
  const bf16* dO = dout + seq.row0 * g.ld_out + hd;
  const int64_t sb = stat_base(g, b, h);
  const attn::TileRange kt = key_tiles(mask, q0, BM, seq.len, BN);
  const int kt0 = kt.first, n_kt = kt.end;
  // Rows that see no key (a split segment's key rows) add nothing to dQ:
  // leave before issuing any copy.
  if (kt0 >= n_kt) return;

  load_rows<bf16, BM, D, LD, NT>(sQ, Q, g.ld_qkv, q0, seq.len);
  load_rows<bf16, BM, D, LD, NT>(sO, dO, g.ld_out, q0, seq.len);
  load_rows<bf16, BN, D, LD, NT>(sK, K, g.ld_qkv, kt0 * BN, seq.len);
  load_rows<bf16, BN, D, LD, NT>(sV, V, g.ld_qkv, kt0 * BN, seq.len);
  cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int wm0 = warp * MT * 16;
  const float sl2 = g.scale * kLog2e;
  float lr[MT][2], dl[MT][2];  // lse * log2(e) and Delta of this thread's rows
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = q0 + wm0 + mt * 16 + gid + 8 * r;
      lr[mt][r] = q < seq.len ? lse[sb + q] * kLog2e : 0.f;
      dl[mt][r] = q < seq.len ? delta[sb + q] : 0.f;
    }
  float dq[MT][D / 8][4];
  zero(dq);

  for (int j = kt0; j < n_kt; ++j) {
    if (j + 1 < n_kt) {
      const int nb = (j + 1 - kt0) & 1;
      load_rows<bf16, BN, D, LD, NT>(sK + nb * BN * LD, K, g.ld_qkv, (j + 1) * BN, seq.len);
      load_rows<bf16, BN, D, LD, NT>(sV + nb * BN * LD, V, g.ld_qkv, (j + 1) * BN, seq.len);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const bf16* k_s = sK + ((j - kt0) & 1) * BN * LD;
    const bf16* v_s = sV + ((j - kt0) & 1) * BN * LD;

    // A warp whose rows all end before this key tile, or whose windows all start after it, skips it.
    if (rows_see_keys(mask, q0 + wm0, MT * 16, j * BN, BN)) {
      float p[MT][BN / 8][4];
      zero(p);
      gemm_abt<MT, BN, D, LD>(p, sQ, wm0, k_s, lane);
      const int k0 = j * BN;
      const bool masked = needs_mask(mask, q0 + wm0, MT * 16, k0, BN, seq.len);
      attn::Span sp[MT][2];  // (each query row's keys)
      fragment_row_spans<false>(sp, mask, masked, q0 + wm0 + gid);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e >> 1, q = q0 + wm0 + mt * 16 + gid + 8 * r, k = k0 + nt * 8 + 2 * tig + (e & 1);
            float x = exp2_approx(p[mt][nt][e] * sl2 - lr[mt][r]);
            if (masked && !(k < seq.len && attn::row_ok(mask, sp[mt][r], false, q, k))) x = 0.f;
            p[mt][nt][e] = x;
          }
      float ds[MT][BN / 8][4];
      zero(ds);
      gemm_abt<MT, BN, D, LD>(ds, sO, wm0, v_s, lane);  // dP = dO V^T
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) ds[mt][nt][e] = p[mt][nt][e] * (ds[mt][nt][e] - dl[mt][e >> 1]);
      gemm_pb<MT, D, BN, LD>(dq, ds, k_s, lane);  // dQ += dS K
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  bf16* dQ = dqkv + seq.row0 * g.ld_qkv + hd;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q = q0 + wm0 + mt * 16 + gid + 8 * r;
      if (q >= seq.len) continue;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        __nv_bfloat162* pq = reinterpret_cast<__nv_bfloat162*>(dQ + int64_t(q) * g.ld_qkv + dt * 8 + 2 * tig);
        const float2 old = __bfloat1622float2(*pq);
        *pq = __floats2bfloat162_rn(old.x + g.scale * dq[mt][dt][2 * r], old.y + g.scale * dq[mt][dt][2 * r + 1]);
      }
    }
}

// ======================================================================
// fp32 kernels: 256 threads as ty (16) x tx (16). A thread owns rows
// ty * RM + i of the block's tile and columns tx + 16 * j of the tile it loops
// over (keys, or d for O and the gradients): shared rows are read as float4
// along d, with a pitch of D + 4 floats so that the 16 rows a quarter-warp
// reads fall in different banks. The 16 threads of a row are one half-warp:
// row max and sum are xor-shuffles over lanes 1, 2, 4, 8.
// ======================================================================

template <int D_, int BM_, int BN_>
struct F32Cfg {
  static constexpr int D = D_, BM = BM_, BN = BN_, THREADS = 256;
  static constexpr int RM = BM / 16, RN = BN / 16, DN = D / 16, LDD = D + 4, LDP = BN + 4;
  static_assert(D % 16 == 0 && BM % 16 == 0 && BN % 16 == 0, "16 x 16 threads tile rows and columns");
};

__device__ __forceinline__ float half_warp_max(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float dot4(float acc, const float4& a, const float4& b) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}
__device__ __forceinline__ float get(const float4& v, int e) { return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w; }

// acc[i][j] += A[ty * RA + i] . B[tx + 16 j] over d < D: rows of sa and sb,
// both [row][LDD].
template <int RA, int RB, int D, int LDD>
__device__ __forceinline__ void dots(float (&acc)[RA][RB], const float* sa, const float* sb, int ty, int tx) {
#pragma unroll 2
  for (int d = 0; d < D; d += 4) {
    float4 a[RA], bv[RB];
#pragma unroll
    for (int i = 0; i < RA; ++i) a[i] = *reinterpret_cast<const float4*>(sa + (ty * RA + i) * LDD + d);
#pragma unroll
    for (int j = 0; j < RB; ++j) bv[j] = *reinterpret_cast<const float4*>(sb + (tx + 16 * j) * LDD + d);
#pragma unroll
    for (int i = 0; i < RA; ++i)
#pragma unroll
      for (int j = 0; j < RB; ++j) acc[i][j] = dot4(acc[i][j], a[i], bv[j]);
  }
}

// acc[i][dd] += sum_c P[ty*RA + i][c] * B[c][tx + 16 dd] over c < K: P is
// smem [RA*16][LDP], B smem [K][LDD].
template <int RA, int DN, int K, int LDP, int LDD>
__device__ __forceinline__ void pv(float (&acc)[RA][DN], const float* sp, const float* sb, int ty, int tx) {
#pragma unroll 2
  for (int c = 0; c < K; c += 4) {
    float4 a[RA];
#pragma unroll
    for (int i = 0; i < RA; ++i) a[i] = *reinterpret_cast<const float4*>(sp + (ty * RA + i) * LDP + c);
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int dd = 0; dd < DN; ++dd) {
        const float bv = sb[(c + e) * LDD + tx + 16 * dd];
#pragma unroll
        for (int i = 0; i < RA; ++i) acc[i][dd] = fmaf(get(a[i], e), bv, acc[i][dd]);
      }
  }
}

template <class Cfg, class Mask>
__global__ void __launch_bounds__(Cfg::THREADS) attention_fwd_f32(const float* __restrict__ qkv, float* __restrict__ out,
                                                          float* __restrict__ lse, Geom g, Mask mask_) {
  constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, RM = Cfg::RM, RN = Cfg::RN, DN = Cfg::DN;
  constexpr int LDD = Cfg::LDD, LDP = Cfg::LDP;
  extern __shared__ __align__(16) unsigned char smem[];
  float* sQ = reinterpret_cast<float*>(smem);  // BM x LDD
  float* sK = sQ + BM * LDD;                   // BN x LDD
  float* sV = sK + BN * LDD;                   // BN x LDD
  float* sP = sV + BN * LDD;                   // BM x LDP

  const attn::TileWork w = block_work(g, true);
  if (w.b < 0) return;  // (varlen: past the work list)
  const int h = blockIdx.y, b = w.b;
  const Seq seq = sequence(g, b);
  const Mask mask = mask_.bind(b, seq.row0, seq.len);  // (varlen member flags: this segment's)
  const int q0 = w.tile * BM;
  if (q0 >= seq.len) return;
  const int D_ = D;
  const float* Q = qkv + seq.row0 * g.ld_qkv + int64_t(h) * D_;
  const float* K = Q + g.C;
  const float* V = Q + 2 * g.C;
  const attn::TileRange kt = key_tiles(mask, q0, BM, seq.len, BN);
  const int kt0 = kt.first, n_kt = kt.end;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  load_rows<float, BM, D, LDD, Cfg::THREADS>(sQ, Q, g.ld_qkv, q0, seq.len);
  cp_async_commit();
  float o[RM][DN] = {}, m[RM], l[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) m[i] = -INFINITY, l[i] = 0.f;

  for (int j = kt0; j < n_kt; ++j) {
    const int k0 = j * BN;
    load_rows<float, BN, D, LDD, Cfg::THREADS>(sK, K, g.ld_qkv, k0, seq.len);
    load_rows<float, BN, D, LDD, Cfg::THREADS>(sV, V, g.ld_qkv, k0, seq.len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    float s[RM][RN] = {};
    dots<RM, RN, D, LDD>(s, sQ, sK, ty, tx);
    const bool masked = needs_mask(mask, q0, BM, k0, BN, seq.len);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const int q = q0 + ty * RM + i;
      const attn::Span sp = masked ? mask.keys_of(q) : attn::Span{};
      float mx = -INFINITY;
#pragma unroll
      for (int jj = 0; jj < RN; ++jj) {
        float x = s[i][jj] * g.scale;
        const int k = k0 + tx + 16 * jj;
        if (masked && !(k < seq.len && attn::row_ok(mask, sp, false, q, k))) x = -INFINITY;
        s[i][jj] = x;
        mx = fmaxf(mx, x);
      }
      mx = half_warp_max(mx);
      const float m_new = fmaxf(m[i], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = expf(m[i] - m_use);
      float rs = 0;
#pragma unroll
      for (int jj = 0; jj < RN; ++jj) {
        const float p = expf(s[i][jj] - m_use);
        sP[(ty * RM + i) * LDP + tx + 16 * jj] = p;
        rs += p;
      }
      l[i] = l[i] * alpha + rs;
      m[i] = m_new;
#pragma unroll
      for (int dd = 0; dd < DN; ++dd) o[i][dd] *= alpha;
    }
    __syncthreads();
    pv<RM, DN, BN, LDP, LDD>(o, sP, sV, ty, tx);
    __syncthreads();
  }
  cp_async_wait<0>();  // (no key tile, as in a split segment's key-row blocks: the prologue's copies land before the block exits)

  const int64_t sb = stat_base(g, b, h);
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const float sum = half_warp_sum(l[i]);
    const int q = q0 + ty * RM + i;
    if (q >= seq.len) continue;
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    float* orow = out + (seq.row0 + q) * g.ld_out + int64_t(h) * D_;
#pragma unroll
    for (int dd = 0; dd < DN; ++dd) orow[tx + 16 * dd] = o[i][dd] * inv;
    if (tx == 0) lse[sb + q] = sum > 0.f ? m[i] + logf(sum) : -INFINITY;
  }
}

// dK, dV: a block owns BN keys (rows ty * RK + i), loops over query tiles of
// BM (columns tx + 16 j).
template <class Cfg, class Mask>
__global__ void __launch_bounds__(Cfg::THREADS)
    attention_bwd_dkdv_f32(const float* __restrict__ qkv, const float* __restrict__ dout, const float* __restrict__ lse,
                           const float* __restrict__ delta, float* __restrict__ dqkv, Geom g, Mask mask_) {
  // Here the block's own tile (keys) is BN and the tile it loops over (queries) BM.
  constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, DN = Cfg::DN, LDD = Cfg::LDD;
  constexpr int RK = BN / 16, RQ = BM / 16, LDP = BM + 4;
  extern __shared__ __align__(16) unsigned char smem[];
  float* sK = reinterpret_cast<float*>(smem);  // BN x LDD
  float* sV = sK + BN * LDD;                   // BN x LDD
  float* sQ = sV + BN * LDD;                   // BM x LDD
  float* sO = sQ + BM * LDD;                   // BM x LDD (dO)
  float* sP = sO + BM * LDD;                   // BN x LDP: P^T
  float* sS = sP + BN * LDP;                   // BN x LDP: dS^T
  float* sL = sS + BN * LDP;                   // BM
  float* sDl = sL + BM;                        // BM

  const attn::TileWork w = block_work(g, false);
  if (w.b < 0) return;  // (varlen: past the work list)
  const int h = blockIdx.y, b = w.b;
  const Seq seq = sequence(g, b);
  const Mask mask = mask_.bind(b, seq.row0, seq.len);  // (varlen member flags: this segment's)
  const int k0 = w.tile * BN;
  if (k0 >= seq.len) return;
  const int D_ = D;
  const int64_t hd = int64_t(h) * D_;
  const float* Q = qkv + seq.row0 * g.ld_qkv + hd;
  const float* K = Q + g.C;
  const float* V = Q + 2 * g.C;
  const float* dO = dout + seq.row0 * g.ld_out + hd;
  const int64_t sb = stat_base(g, b, h);
  const attn::TileRange qtr = query_tiles(mask, k0, BN, seq.len, BM);
  const int qt0 = qtr.first, n_qt = qtr.end;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  load_rows<float, BN, D, LDD, Cfg::THREADS>(sK, K, g.ld_qkv, k0, seq.len);
  load_rows<float, BN, D, LDD, Cfg::THREADS>(sV, V, g.ld_qkv, k0, seq.len);
  cp_async_commit();
  float dk[RK][DN] = {}, dv[RK][DN] = {};

  for (int qt = qt0; qt < n_qt; ++qt) {
    const int q0 = qt * BM;
    load_rows<float, BM, D, LDD, Cfg::THREADS>(sQ, Q, g.ld_qkv, q0, seq.len);
    load_rows<float, BM, D, LDD, Cfg::THREADS>(sO, dO, g.ld_out, q0, seq.len);
    cp_async_commit();
    for (int i = threadIdx.x; i < BM; i += Cfg::THREADS) {
      const int q = q0 + i;
      sL[i] = q < seq.len ? lse[sb + q] : 0.f;
      sDl[i] = q < seq.len ? delta[sb + q] : 0.f;
    }
    cp_async_wait<0>();
    __syncthreads();
    float s[RK][RQ] = {}, dp[RK][RQ] = {};
    dots<RK, RQ, D, LDD>(s, sK, sQ, ty, tx);
    dots<RK, RQ, D, LDD>(dp, sV, sO, ty, tx);
    const bool masked = needs_mask(mask, q0, BM, k0, BN, seq.len);
#pragma unroll
    for (int i = 0; i < RK; ++i) {
      const attn::Span sp = masked ? mask.queries_of(k0 + ty * RK + i) : attn::Span{};
#pragma unroll
      for (int jj = 0; jj < RQ; ++jj) {
        const int k = k0 + ty * RK + i, qi = tx + 16 * jj, q = q0 + qi;
        float p = expf(s[i][jj] * g.scale - sL[qi]);
        if (masked && !(q < seq.len && k < seq.len && attn::row_ok(mask, sp, true, q, k))) p = 0.f;
        sP[(ty * RK + i) * LDP + qi] = p;
        sS[(ty * RK + i) * LDP + qi] = p * (dp[i][jj] - sDl[qi]);
      }
    }
    __syncthreads();
    pv<RK, DN, BM, LDP, LDD>(dv, sP, sO, ty, tx);
    pv<RK, DN, BM, LDP, LDD>(dk, sS, sQ, ty, tx);
    __syncthreads();
  }
  cp_async_wait<0>();  // (a mask under which no query sees these keys)

#pragma unroll
  for (int i = 0; i < RK; ++i) {
    const int k = k0 + ty * RK + i;
    if (k >= seq.len) continue;
    float* dK = dqkv + (seq.row0 + k) * g.ld_qkv + g.C + hd;
    float* dV = dK + g.C;
#pragma unroll
    for (int dd = 0; dd < DN; ++dd) {
      dK[tx + 16 * dd] += g.scale * dk[i][dd];
      dV[tx + 16 * dd] += dv[i][dd];
    }
  }
}

// dQ: a block owns BM queries, loops over key tiles of BN up to the diagonal.
template <class Cfg, class Mask>
__global__ void __launch_bounds__(Cfg::THREADS)
    attention_bwd_dq_f32(const float* __restrict__ qkv, const float* __restrict__ dout, const float* __restrict__ lse,
                         const float* __restrict__ delta, float* __restrict__ dqkv, Geom g, Mask mask_) {
  constexpr int D = Cfg::D, BM = Cfg::BM, BN = Cfg::BN, RM = Cfg::RM, RN = Cfg::RN, DN = Cfg::DN;
  constexpr int LDD = Cfg::LDD, LDP = Cfg::LDP;
  extern __shared__ __align__(16) unsigned char smem[];
  float* sQ = reinterpret_cast<float*>(smem);  // BM x LDD
  float* sO = sQ + BM * LDD;                   // BM x LDD (dO)
  float* sK = sO + BM * LDD;                   // BN x LDD
  float* sV = sK + BN * LDD;                   // BN x LDD
  float* sS = sV + BN * LDD;                   // BM x LDP: dS

  const attn::TileWork w = block_work(g, true);
  if (w.b < 0) return;  // (varlen: past the work list)
  const int h = blockIdx.y, b = w.b;
  const Seq seq = sequence(g, b);
  const Mask mask = mask_.bind(b, seq.row0, seq.len);  // (varlen member flags: this segment's)
  const int q0 = w.tile * BM;
  if (q0 >= seq.len) return;
  const int D_ = D;
  const int64_t hd = int64_t(h) * D_;
  const float* Q = qkv + seq.row0 * g.ld_qkv + hd;
  const float* K = Q + g.C;
  const float* V = Q + 2 * g.C;
  const float* dO = dout + seq.row0 * g.ld_out + hd;
  const int64_t sb = stat_base(g, b, h);
  const attn::TileRange kt = key_tiles(mask, q0, BM, seq.len, BN);
  const int kt0 = kt.first, n_kt = kt.end;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  load_rows<float, BM, D, LDD, Cfg::THREADS>(sQ, Q, g.ld_qkv, q0, seq.len);
  load_rows<float, BM, D, LDD, Cfg::THREADS>(sO, dO, g.ld_out, q0, seq.len);
  cp_async_commit();
  float lr[RM], dl[RM];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int q = q0 + ty * RM + i;
    lr[i] = q < seq.len ? lse[sb + q] : 0.f;
    dl[i] = q < seq.len ? delta[sb + q] : 0.f;
  }
  float dq[RM][DN] = {};

  for (int j = kt0; j < n_kt; ++j) {
    const int k0 = j * BN;
    load_rows<float, BN, D, LDD, Cfg::THREADS>(sK, K, g.ld_qkv, k0, seq.len);
    load_rows<float, BN, D, LDD, Cfg::THREADS>(sV, V, g.ld_qkv, k0, seq.len);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    float s[RM][RN] = {}, dp[RM][RN] = {};
    dots<RM, RN, D, LDD>(s, sQ, sK, ty, tx);
    dots<RM, RN, D, LDD>(dp, sO, sV, ty, tx);
    const bool masked = needs_mask(mask, q0, BM, k0, BN, seq.len);
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      const attn::Span sp = masked ? mask.keys_of(q0 + ty * RM + i) : attn::Span{};
#pragma unroll
      for (int jj = 0; jj < RN; ++jj) {
        const int q = q0 + ty * RM + i, k = k0 + tx + 16 * jj;
        float p = expf(s[i][jj] * g.scale - lr[i]);
        if (masked && !(k < seq.len && attn::row_ok(mask, sp, false, q, k))) p = 0.f;
        sS[(ty * RM + i) * LDP + tx + 16 * jj] = p * (dp[i][jj] - dl[i]);
      }
    }
    __syncthreads();
    pv<RM, DN, BN, LDP, LDD>(dq, sS, sK, ty, tx);
    __syncthreads();
  }
  cp_async_wait<0>();  // (no key tile, as in a split segment's key-row blocks: the prologue's copies land before the block exits)

#pragma unroll
  for (int i = 0; i < RM; ++i) {
    const int q = q0 + ty * RM + i;
    if (q >= seq.len) continue;
    float* dQ = dqkv + (seq.row0 + q) * g.ld_qkv + hd;
#pragma unroll
    for (int dd = 0; dd < DN; ++dd) dQ[tx + 16 * dd] += g.scale * dq[i][dd];
  }
}

// ---- tile configurations -------------------------------------------

// The tile configurations (own rows x rows looped over per step), shared
// memory, and registers per thread from ptxas (sm_90, CUDA 13.0; no spills):
//   bf16 forward  D=64: 128 q x 64 k, 4 warps x 32 rows    54 KiB  232 regs
//                 D=128: 128 q x 64 k, 8 warps x 16 rows  102 KiB  218 regs
//                 (Q in registers: 8 of the 72 ldmatrix a warp issues per key
//                 tile; one block an SM either way - 174 regs without)
//                 (4 warps x 32 rows at D=128 spilled: 255 regs + 108 B)
//   bf16 dK/dV    D=64: 64 k x 64 q, 4 warps x 16 rows     55 KiB  167 regs
//                 D=128: 64 k x 32 q                      68.5 KiB 240 regs
//   bf16 dQ       64 q x 64 k, 4 warps x 16 rows   54 / 102 KiB  165 / 217 regs
//   f32 (256 threads) 64 x 64 tiles for D = 16, 32, 64 (32-102 KiB, 113-128
//                 regs), 32 x 32 for D = 128 (54-75 KiB, 79-80 regs)
// K/V (forward, dQ) and Q/dO (dK/dV) are double-buffered in the bf16 kernels;
// the f32 kernels load, wait and compute. Tuning starts here on the GPU.
template <int D>
struct Configs {
  using Fwd = TcCfg<D, (D == 128 ? 8 : 4), (D == 128 ? 1 : 2), 64, /*QREG=*/D == 128>;
  using Dkdv = TcCfg<D, 4, 1, (D == 128 ? 32 : 64)>;
  using Dq = TcCfg<D, 4, 1, 64>;
  static constexpr int kF32Tile = D == 128 ? 32 : 64;
  using F32 = F32Cfg<D, kF32Tile, kF32Tile>;
};

template <class Cfg>
constexpr size_t tc_smem_fwd() {
  return sizeof(bf16) * (Cfg::BM + 4 * Cfg::BN) * Cfg::LD;
}
template <class Cfg>
constexpr size_t tc_smem_dkdv() {
  return sizeof(bf16) * (2 * Cfg::BM + 4 * Cfg::BN) * Cfg::LD + sizeof(float) * 4 * Cfg::BN;
}
template <class Cfg>
constexpr size_t tc_smem_dq() {
  return sizeof(bf16) * (2 * Cfg::BM + 4 * Cfg::BN) * Cfg::LD;
}
template <class Cfg>
constexpr size_t f32_smem_fwd() {
  return sizeof(float) * ((Cfg::BM + 2 * Cfg::BN) * Cfg::LDD + Cfg::BM * Cfg::LDP);
}
template <class Cfg>
constexpr size_t f32_smem_dkdv() {
  return sizeof(float) * ((2 * Cfg::BN + 2 * Cfg::BM) * Cfg::LDD + 2 * Cfg::BN * (Cfg::BM + 4) + 2 * Cfg::BM);
}
template <class Cfg>
constexpr size_t f32_smem_dq() {
  return sizeof(float) * ((2 * Cfg::BM + 2 * Cfg::BN) * Cfg::LDD + Cfg::BM * Cfg::LDP);
}

// ---- launchers ---------------------------------------------------------

cudaStream_t stream_of(const Ctx& ctx) { return static_cast<cudaStream_t>(ctx.stream.handle); }

// The varlen work list for tiles of `tile` rows (attn::tile_work): one block;
// each thread sums the tile counts of a run of segments, an exclusive scan
// of the threads' sums (common.cuh) places the runs, and each thread writes
// its segments' items (attn::thread_run, run_tiles, run_items: replayed on the
// host by tests/attention_tiles_test.cc); items [total, bound) say "none".
__global__ void __launch_bounds__(1024) tile_list_kernel(const int32_t* __restrict__ seg, int S, int tile, int bound,
                                                         attn::TileItem* __restrict__ items) {
  __shared__ int32_t scratch[1024];
  const attn::SegmentRun r = attn::thread_run(S, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
  int32_t total = 0;
  const int32_t start = block_exclusive_sum(attn::run_tiles(seg, r, tile), scratch, &total);
  attn::run_items(items, start, seg, r, tile);
  for (int x = total + threadIdx.x; x < bound; x += blockDim.x) items[x] = attn::TileItem{-1, 0, 0, 0};
}

// The grid's x extent: the tiles of the block's own rows; varlen: the work
// list's bound.
unsigned grid_x(const Geom& g, int tile) {
  if (g.seg) return static_cast<unsigned>((g.rows + tile - 1) / tile + g.B);
  return static_cast<unsigned>((g.T + tile - 1) / tile);
}

// g for a launch with tiles of `tile` rows: varlen gets its work list, built
// in scratch part `part` (0 or 1: the two kernels of a backward) on st.
Geom with_work(const Geom& g, int tile, int part, cudaStream_t st) {
  if (!g.seg) return g;
  const unsigned bound = grid_x(g, tile);
  if (tile < 16 || bound > g.items_cap)
    throw BackendError("attention: a varlen work list of " + std::to_string(bound) + " items at tiles of " +
                       std::to_string(tile) + " rows (room for " + std::to_string(g.items_cap) + ")");
  Geom w = g;
  attn::TileItem* items = g.scratch + part * g.items_cap;
  w.work = items;
  tile_list_kernel<<<1, 1024, 0, st>>>(g.seg, g.B, tile, static_cast<int>(bound), items);
  CUDA_CHECK(cudaGetLastError());
  return w;
}

// The grids: (tiles of the block's own rows, heads computed, sequences);
// varlen: (the work list's bound, heads computed, 1).
dim3 grid(const Geom& g, int tile) {
  if (g.work) return dim3(grid_x(g, tile), g.heads, 1);
  return dim3(grid_x(g, tile), g.heads, g.B);
}

// The bf16 launches with any tile configuration (TcCfg): Configs<D>'s
// below; ops/cuda/attention_variants.cu's others, for a GPU run to time.
template <class Cfg, class Mask>
void forward_bf16_cfg(const Geom& g, Mask mask, const bf16* qkv, bf16* out, float* lse, cudaStream_t st) {
  constexpr auto k = attention_fwd_bf16<Cfg, Mask>;
  constexpr size_t smem = tc_smem_fwd<Cfg>();
  static_assert(smem <= 227 * 1024, "an sm_90 block's shared memory");
  allow_smem<k>(smem);
  const Geom gw = with_work(g, Cfg::BM, 0, st);
  k<<<grid(gw, Cfg::BM), Cfg::THREADS, smem, st>>>(qkv, out, lse, gw, mask);
  CUDA_CHECK(cudaGetLastError());
}

template <class Kv, class Q, class Mask>
void backward_bf16_cfg(const Geom& g, Mask mask, const bf16* qkv, const bf16* dout, const float* lse,
                       const float* delta, bf16* dqkv, cudaStream_t st) {
  constexpr auto kkv = attention_bwd_dkdv_bf16<Kv, Mask>;
  constexpr auto kq = attention_bwd_dq_bf16<Q, Mask>;
  constexpr size_t smem_kv = tc_smem_dkdv<Kv>(), smem_q = tc_smem_dq<Q>();
  static_assert(smem_kv <= 227 * 1024 && smem_q <= 227 * 1024, "an sm_90 block's shared memory");
  allow_smem<kkv>(smem_kv);
  allow_smem<kq>(smem_q);
  const Geom gkv = with_work(g, Kv::BM, 0, st), gq = with_work(g, Q::BM, 1, st);
  kkv<<<grid(gkv, Kv::BM), Kv::THREADS, smem_kv, st>>>(qkv, dout, lse, delta, dqkv, gkv, mask);
  CUDA_CHECK(cudaGetLastError());
  kq<<<grid(gq, Q::BM), Q::THREADS, smem_q, st>>>(qkv, dout, lse, delta, dqkv, gq, mask);
  CUDA_CHECK(cudaGetLastError());
}

template <int D, class Mask>
void forward_bf16(const Geom& g, Mask mask, const bf16* qkv, bf16* out, float* lse, cudaStream_t st) {
  forward_bf16_cfg<typename Configs<D>::Fwd>(g, mask, qkv, out, lse, st);
}

template <int D, class Mask>
void backward_bf16(const Geom& g, Mask mask, const bf16* qkv, const bf16* dout, const float* lse, const float* delta,
                   bf16* dqkv, cudaStream_t st) {
  backward_bf16_cfg<typename Configs<D>::Dkdv, typename Configs<D>::Dq>(g, mask, qkv, dout, lse, delta, dqkv, st);
}

template <int D, class Mask>
void forward_f32(const Geom& g, Mask mask, const float* qkv, float* out, float* lse, cudaStream_t st) {
  using Cfg = typename Configs<D>::F32;
  constexpr auto k = attention_fwd_f32<Cfg, Mask>;
  constexpr size_t smem = f32_smem_fwd<Cfg>();
  allow_smem<k>(smem);
  const Geom gw = with_work(g, Cfg::BM, 0, st);
  k<<<grid(gw, Cfg::BM), Cfg::THREADS, smem, st>>>(qkv, out, lse, gw, mask);
  CUDA_CHECK(cudaGetLastError());
}

template <int D, class Mask>
void backward_f32(const Geom& g, Mask mask, const float* qkv, const float* dout, const float* lse, const float* delta,
                  float* dqkv, cudaStream_t st) {
  using Cfg = typename Configs<D>::F32;
  constexpr auto kkv = attention_bwd_dkdv_f32<Cfg, Mask>;
  constexpr auto kq = attention_bwd_dq_f32<Cfg, Mask>;
  constexpr size_t smem_kv = f32_smem_dkdv<Cfg>(), smem_q = f32_smem_dq<Cfg>();
  allow_smem<kkv>(smem_kv);
  allow_smem<kq>(smem_q);
  const Geom gkv = with_work(g, Cfg::BN, 0, st), gq = with_work(g, Cfg::BM, 1, st);
  kkv<<<grid(gkv, Cfg::BN), Cfg::THREADS, smem_kv, st>>>(qkv, dout, lse, delta, dqkv, gkv, mask);
  CUDA_CHECK(cudaGetLastError());
  kq<<<grid(gq, Cfg::BM), Cfg::THREADS, smem_q, st>>>(qkv, dout, lse, delta, dqkv, gq, mask);
  CUDA_CHECK(cudaGetLastError());
}

[[noreturn]] void unsupported(const char* op, DType dt, int64_t D) {
  throw BackendError(std::string(op) + ": head dim " + std::to_string(D) + " in " + dtype_name(dt) +
                     " has no CUDA kernel (f32: 16, 32, 64, 128; bf16: 64, 128)");
}
void check_aligned(const char* op, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
      throw BackendError(std::string(op) + ": a tensor is not 16-byte aligned (the kernels load 16-byte vectors)");
}

// The dense entry points' geometry (ops/attention.h's AttentionShape) and size limits.
inline Geom geom(const AttentionShape& s) {
  Geom g;
  g.B = static_cast<int>(s.B);
  g.H = static_cast<int>(s.H);
  g.heads = static_cast<int>(s.active_heads());
  g.T = static_cast<int>(s.T);
  g.C = s.C;
  g.ld_qkv = 3 * s.C;
  g.ld_out = s.C;
  g.scale = 1.f / std::sqrt(static_cast<float>(s.C / s.H));
  return g;
}

inline void check_size(const char* op, const AttentionShape& s) {
  if (s.T > INT32_MAX / 2 || s.B > 65535 || s.H > 65535)
    throw BackendError(std::string(op) + ": B, H up to 65535 and T up to 2^30 on CUDA");
}

// One forward, any geometry and mask: the dtype and head-dim dispatch.
template <class Mask>
void forward_any(const char* op, const Geom& g, Mask mask, const Tensor& qkv_t, Tensor& out_t, float* lse,
                 int64_t D, cudaStream_t st) {
  if (qkv_t.dtype() == DType::bf16) {
    const bf16* qkv = reinterpret_cast<const bf16*>(qkv_t.data<bf16_t>());
    bf16* out = reinterpret_cast<bf16*>(out_t.data<bf16_t>());
    switch (D) {
      case 64: return forward_bf16<64>(g, mask, qkv, out, lse, st);
      case 128: return forward_bf16<128>(g, mask, qkv, out, lse, st);
      default: unsupported(op, DType::bf16, D);
    }
  }
  const float* qkv = qkv_t.data<float>();
  float* out = out_t.data<float>();
  switch (D) {
    case 16: return forward_f32<16>(g, mask, qkv, out, lse, st);
    case 32: return forward_f32<32>(g, mask, qkv, out, lse, st);
    case 64: return forward_f32<64>(g, mask, qkv, out, lse, st);
    case 128: return forward_f32<128>(g, mask, qkv, out, lse, st);
    default: unsupported(op, DType::f32, D);
  }
}

// Delta over `rows` packed rows: the head-dim dispatch (D / E lanes a row).
template <class T>
void delta_any(const T* dout, const T* out, float* delta, const Geom& g, int64_t D, int64_t rows, cudaStream_t st) {
  const int64_t lanes = rows * g.heads * (D * static_cast<int64_t>(sizeof(T)) / 16);
  const unsigned blocks = static_cast<unsigned>((lanes + 255) / 256);
  switch (D) {
    case 16: attention_delta_kernel<T, 16><<<blocks, 256, 0, st>>>(dout, out, delta, g); break;
    case 32: attention_delta_kernel<T, 32><<<blocks, 256, 0, st>>>(dout, out, delta, g); break;
    case 64: attention_delta_kernel<T, 64><<<blocks, 256, 0, st>>>(dout, out, delta, g); break;
    case 128: attention_delta_kernel<T, 128><<<blocks, 256, 0, st>>>(dout, out, delta, g); break;
    default: throw BackendError("attention Delta: head dim " + std::to_string(D) + " (16, 32, 64 or 128)");
  }
  CUDA_CHECK(cudaGetLastError());
}

// One backward, any geometry and mask: Delta over `rows` packed rows, then
// the dK/dV and dQ kernels.
template <class Mask>
void backward_any(const char* op, Ctx& ctx, const Geom& g, Mask mask, int64_t rows, Tensor& dqkv_t,
                  const Tensor& dout_t, const Tensor& qkv_t, const Tensor& out_t, const float* lse, int64_t D) {
  const bool bf = qkv_t.dtype() == DType::bf16;
  if (!tiled_head_dim(qkv_t.dtype(), D)) unsupported(op, qkv_t.dtype(), D);
  cudaStream_t st = stream_of(ctx);
  Tensor delta = Tensor::empty({rows * g.H}, DType::f32, ctx);  // laid out as lse
  float* dl = delta.data<float>();
  if (bf) {
    const bf16* qkv = reinterpret_cast<const bf16*>(qkv_t.data<bf16_t>());
    const bf16* dout = reinterpret_cast<const bf16*>(dout_t.data<bf16_t>());
    const bf16* out = reinterpret_cast<const bf16*>(out_t.data<bf16_t>());
    bf16* dqkv = reinterpret_cast<bf16*>(dqkv_t.data<bf16_t>());
    delta_any<bf16>(dout, out, dl, g, D, rows, st);
    if (D == 64) return backward_bf16<64>(g, mask, qkv, dout, lse, dl, dqkv, st);
    return backward_bf16<128>(g, mask, qkv, dout, lse, dl, dqkv, st);
  }
  const float* qkv = qkv_t.data<float>();
  const float* dout = dout_t.data<float>();
  const float* out = out_t.data<float>();
  float* dqkv = dqkv_t.data<float>();
  delta_any<float>(dout, out, dl, g, D, rows, st);
  switch (D) {
    case 16: return backward_f32<16>(g, mask, qkv, dout, lse, dl, dqkv, st);
    case 32: return backward_f32<32>(g, mask, qkv, dout, lse, dl, dqkv, st);
    case 64: return backward_f32<64>(g, mask, qkv, dout, lse, dl, dqkv, st);
    default: return backward_f32<128>(g, mask, qkv, dout, lse, dl, dqkv, st);
  }
}

}  // namespace
}  // namespace sy::ops::cuda
