// Token + position embedding on CUDA.
//
// forward:  one thread per output element, out = wte[tok] + wpe[t] (one add:
//           bitwise the CPU's), or wte[tok] without a position table (RoPE).
// backward: dwte: a stable radix sort of (token, position) pairs (cub_ops),
//           then one block per vocabulary row sums its positions' rows in
//           position order, starting from the row's current gradient: the
//           CPU's order of additions exactly, with one owner per row (no
//           atomics). dwpe[t] += sum_b dout[b*T + t] is a column sum over the
//           B sequences of dout viewed as (B, T*C) (common.cuh, fixed order).
//           A tied LM head's gradient is already in dwte (the head's matmul
//           backward wrote it first): the rows sum starts from it, as the CPU.
#include "ops/cuda/common.cuh"
#include "ops/cuda/cub_ops.h"
#include "ops/embedding.h"

namespace sy::ops::cuda {

template <class T>
static __global__ void embedding_forward_kernel(T* out, const int32_t* tok, const float* wte, const float* wpe,
                                                int64_t N, int64_t C, int64_t T_len) {
  const int64_t total = N * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i % C;
    out[i] = from_float<T>(wpe ? wte[tok[n] * C + c] + wpe[(n % T_len) * C + c] : wte[tok[n] * C + c]);
  }
}

static __global__ void token_keys(const int32_t* tok, int64_t N, uint64_t* keys, int32_t* pos) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  keys[n] = static_cast<uint32_t>(tok[n]);
  pos[n] = static_cast<int32_t>(n);
}

// Block (v, column tile): dwte[v, c] += dout[n, c] for the positions n of
// token v, in increasing n.
static __global__ void token_rows_sum(float* dwte, const float* dout, const int32_t* pos, const int32_t* starts,
                                      int64_t C) {
  const int64_t v = blockIdx.x;
  const int64_t c = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int32_t p0 = starts[v], p1 = starts[v + 1];
  if (c >= C || p0 == p1) return;
  float acc = dwte[v * C + c];
  for (int32_t p = p0; p < p1; ++p) acc += dout[static_cast<int64_t>(pos[p]) * C + c];
  dwte[v * C + c] = acc;
}

void embedding_forward(Ctx& ctx, const EmbeddingArgs& a) {
  const int64_t N = a.tokens.dim(0), C = a.wte.dim(1);
  if (N == 0) return;
  embedding_forward_kernel<float><<<grid_stride(N * C), kBlock, 0, stream(ctx)>>>(
      a.out.data<float>(), a.tokens.data<int32_t>(), a.wte.data<float>(),
      a.wpe.defined() ? a.wpe.data<float>() : nullptr, N, C, a.T);
  CUDA_CHECK(cudaGetLastError());
}

void embedding_backward(Ctx& ctx, const EmbeddingBackwardArgs& a) {
  const int64_t N = a.tokens.dim(0), V = a.dwte.dim(0), C = a.dwte.dim(1);
  if (N == 0) return;
  SY_CHECK(N < (int64_t{1} << 31), "embedding backward: " << N << " positions");
  // dwte: sort positions by token (stable: positions stay in order within a token).
  Tensor keys = Tensor::empty({2 * N}, DType::i64, ctx);
  Tensor pos = Tensor::empty({2 * N}, DType::i32, ctx);
  auto* k_in = reinterpret_cast<uint64_t*>(keys.data<int64_t>());
  int32_t* p_in = pos.data<int32_t>();
  token_keys<<<grid_for(N), kBlock, 0, stream(ctx)>>>(a.tokens.data<int32_t>(), N, k_in, p_in);
  CUDA_CHECK(cudaGetLastError());
  radix_sort_pairs(ctx, k_in, k_in + N, p_in, p_in + N, N, 0, std::max(1, bits_for(V)));
  Tensor starts = Tensor::empty({V + 1}, DType::i32, ctx);
  segment_starts(ctx, k_in + N, N, 0, V, starts.data<int32_t>());
  const dim3 grid(static_cast<unsigned>(V), grid_for(C));
  token_rows_sum<<<grid, kBlock, 0, stream(ctx)>>>(a.dwte.data<float>(), a.dout.data<float>(), p_in + N,
                                                   starts.data<int32_t>(), C);
  CUDA_CHECK(cudaGetLastError());
  // dwpe rows [0, T): column sums of dout as (B, T*C). None with rotary positions.
  if (a.dwpe.defined())
    column_sums_into(ctx, a.dout.data<float>(), N / a.T, a.T * C, a.dwpe.data<float>());
}

}  // namespace sy::ops::cuda
