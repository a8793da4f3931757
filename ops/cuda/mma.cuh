// Warp-level bf16 tensor-core pieces shared by the flash attention kernels
// (ops/cuda/attention_kernels.cuh) and routed attention's nearest-centroid kernel
// (ops/cuda/routed_attention.cu): ldmatrix, mma.sync m16n8k16 (bf16 in,
// fp32 accumulate), and a warp's products with B from shared tiles (A B^T,
// or A B with B's rows k: ldmatrix .trans).
//
// Fragment layouts of mma m16n8k16 (lane = 4 * gid + tig):
//   A (16x16): a0 (gid, 2tig..+1), a1 (gid+8, 2tig), a2 (gid, 2tig+8), a3 (gid+8, 2tig+8)
//   B (16x8):  b0 (k 2tig..+1, n gid), b1 (k 2tig+8..+9, n gid)
//   C (16x8):  c0,c1 (gid, 2tig..+1), c2,c3 (gid+8, 2tig..+1)
// so the C fragments of two adjacent n-tiles are the A fragment of the next
// GEMM (P -> P V, dS -> dS K). Shared tiles are row-major [row][D] with a
// pitch of D + 8 elements (16 bytes of padding: the 8 rows an ldmatrix reads
// fall in 8 different bank groups).
// Addresses for ldmatrix.x4 (lane l):
//   A of rows m0.., k0..:                  row m0 + (l & 15),                  col k0 + (l >> 4) * 8
//   B pair, smem rows = n (n0..n0+15):     row n0 + (l & 7) + (l >> 4) * 8,     col k0 + ((l >> 3) & 1) * 8
//     -> r0, r1 = b of n-tile n0; r2, r3 = b of n-tile n0 + 8
//   B pair .trans, smem rows = k (k0..+15): row k0 + (l & 7) + ((l >> 3) & 1) * 8, col n0 + (l >> 4) * 8
//     -> r0, r1 = b of n-tile n0; r2, r3 = b of n-tile n0 + 8
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace sy::ops::cuda::mma {

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

// c += a b: a 16x16 bf16 (row), b 16x8 bf16 (col), c 16x8 fp32.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}

__device__ __forceinline__ const __nv_bfloat16* a_addr(const __nv_bfloat16* s, int ld, int m0, int k0, int lane) {
  return s + (m0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8;
}
__device__ __forceinline__ const __nv_bfloat16* b_addr(const __nv_bfloat16* s, int ld, int n0, int k0, int lane) {
  return s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8;
}

__device__ __forceinline__ const __nv_bfloat16* bt_addr(const __nv_bfloat16* s, int ld, int k0, int n0, int lane) {
  return s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8;
}

// acc[MT][N/8] += a[MT] * B for one 16-wide k slice kk: a the A fragments of
// the slice (this warp's rows); B from smem sb, whose rows are n ([N][K],
// so the product is A B^T) or, with KROWS, k ([K][N], ldmatrix .trans).
template <int MT, int N, int LD, bool KROWS = false>
__device__ __forceinline__ void mma_k_slice(float (&acc)[MT][N / 8][4], const uint32_t (&a)[MT][4],
                                            const __nv_bfloat16* sb, int kk, int lane) {
#pragma unroll
  for (int n2 = 0; n2 < N / 16; ++n2) {
    uint32_t b[4];
    if constexpr (KROWS)
      ldmatrix_x4_trans(b, bt_addr(sb, LD, kk * 16, n2 * 16, lane));
    else
      ldmatrix_x4(b, b_addr(sb, LD, n2 * 16, kk * 16, lane));
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      mma_bf16(acc[mt][2 * n2], a[mt], b[0], b[1]);
      mma_bf16(acc[mt][2 * n2 + 1], a[mt], b[2], b[3]);
    }
  }
}

// acc[MT][N/8] += A (rows of this warp, from smem sa) * B^T where B's rows
// (n) are smem rows of sb: both [row][K] row-major. E.g. S = Q K^T.
template <int MT, int N, int K, int LD>
__device__ __forceinline__ void gemm_abt(float (&acc)[MT][N / 8][4], const __nv_bfloat16* sa, int m0,
                                         const __nv_bfloat16* sb, int lane) {
#pragma unroll 2
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], a_addr(sa, LD, m0 + mt * 16, kk * 16, lane));
    mma_k_slice<MT, N, LD>(acc, a, sb, kk, lane);
  }
}

// The A fragments of rows m0.. of smem sa (all K), for A operands a warp
// keeps in registers across a loop (the forward's Q).
template <int MT, int K, int LD>
__device__ __forceinline__ void load_a(uint32_t (&a)[MT][K / 16][4], const __nv_bfloat16* sa, int m0, int lane) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) ldmatrix_x4(a[mt][kk], a_addr(sa, LD, m0 + mt * 16, kk * 16, lane));
}

// gemm_abt with A from registers (load_a).
template <int MT, int N, int K, int LD>
__device__ __forceinline__ void gemm_rbt(float (&acc)[MT][N / 8][4], const uint32_t (&a)[MT][K / 16][4],
                                         const __nv_bfloat16* sb, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t ak[MT][4];  // (the slice's fragments: register names, no copies once unrolled)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) ak[mt][e] = a[mt][kk][e];
    mma_k_slice<MT, N, LD>(acc, ak, sb, kk, lane);
  }
}

}  // namespace sy::ops::cuda::mma
