// Row permutations on CUDA (any dtype: rows are moved as bytes). One thread
// per (row, word): words are 16 bytes (uint4) where the row length and both
// base addresses allow it, else the widest of 8, 4, 2, 1 that does. Every
// output row has exactly one writer (gather: its own; scatter: index is a
// permutation), so no atomics.
// Indices are not range-checked on the device (the CPU reference checks).
//
//   gather_rows:  out[i] = in[index[i]]      scatter_rows: out[index[i]] = in[i]
#include "ops/cuda/common.cuh"
#include "ops/permute.h"

namespace sy::ops::cuda {

template <class W>
static __global__ void move_rows(W* out, const W* in, const int64_t* index, int64_t rows, int64_t words, bool gather) {
  const int64_t n = rows * words;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / words, w = t % words;
    if (gather)
      out[i * words + w] = in[index[i] * words + w];
    else
      out[index[i] * words + w] = in[i * words + w];
  }
}

namespace {

template <class W>
void launch(Ctx& ctx, void* out, const void* in, const int64_t* index, int64_t rows, int64_t row_bytes, bool gather) {
  const int64_t words = row_bytes / static_cast<int64_t>(sizeof(W));
  move_rows<W><<<grid_stride(rows * words), kBlock, 0, stream(ctx)>>>(
      static_cast<W*>(out), static_cast<const W*>(in), index, rows, words, gather);
  CUDA_CHECK(cudaGetLastError());
}

void permute(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index, bool gather) {
  const Tensor& indexed = gather ? out : in;  // the side with a row per index
  const int64_t rows = indexed.dim(0);
  if (rows == 0 || indexed.nbytes() == 0) return;
  const int64_t row_bytes = static_cast<int64_t>(indexed.nbytes()) / rows;
  const auto a = reinterpret_cast<uintptr_t>(out.raw()) | reinterpret_cast<uintptr_t>(in.raw());
  auto fits = [&](int64_t w) { return row_bytes % w == 0 && a % w == 0; };
  const int64_t* idx = index.data<int64_t>();
  if (fits(16))
    launch<uint4>(ctx, out.raw(), in.raw(), idx, rows, row_bytes, gather);
  else if (fits(8))
    launch<uint2>(ctx, out.raw(), in.raw(), idx, rows, row_bytes, gather);
  else if (fits(4))
    launch<uint32_t>(ctx, out.raw(), in.raw(), idx, rows, row_bytes, gather);
  else if (fits(2))
    launch<uint16_t>(ctx, out.raw(), in.raw(), idx, rows, row_bytes, gather);
  else
    launch<uint8_t>(ctx, out.raw(), in.raw(), idx, rows, row_bytes, gather);
}

}  // namespace

void gather_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index) { permute(ctx, out, in, index, true); }

void scatter_rows(Ctx& ctx, Tensor& out, const Tensor& in, const Tensor& index) { permute(ctx, out, in, index, false); }

}  // namespace sy::ops::cuda
