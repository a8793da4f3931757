// What the CUDA kernels of ops/ share (included by ops/cuda/*.cu only):
//
//   stream(ctx), grid_for(n)        launch plumbing
//   allow_smem<Kernel>(bytes)       a kernel's dynamic shared memory past 48 KiB
//   Launch / each_index             one thread per index (grid-stride), for the
//                                   rows headers' step sequences
//   upload / download               small host <-> device tables on ctx's stream
//   warp_sum, warp_max              butterfly reductions: every lane ends with
//                                   the same value, combined in a fixed pattern
//                                   (over the warp, or groups of W lanes)
//   block_sum, block_max            the same over a block, in a fixed tree
//   block_exclusive_sum             a block's exclusive prefix sum of integers
//   column_sums<F>                  out[o][c] += sum_r f(r, c)[o], two stages in a
//                                   fixed order (no atomics)
//   sum_f64                         a fixed-order sum of a device f64 array,
//                                   left on the device (no synchronisation)
//   sum_f64_to_host                 the same, read back (one synchronisation)
//   segment_starts                  where each key segment begins in a sorted array
//   Bf16, elems<E>                  bf16 elements of the packed attention paths
//
// Determinism: every reduction here has a shape that depends only on the
// problem size (never on the SM count or on scheduling), so two runs add the
// same numbers in the same order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "core/cuda_check.h"
#include "core/tensor.h"
#include "ops/cuda/host_device.h"

namespace sy::ops::cuda {

inline cudaStream_t stream(const Ctx& ctx) { return static_cast<cudaStream_t>(ctx.stream.handle); }

constexpr int kBlock = 256;

// Blocks of `block` threads covering n items (at least one).
inline unsigned grid_for(int64_t n, int block = kBlock) {
  const int64_t g = (n + block - 1) / block;
  return static_cast<unsigned>(g < 1 ? 1 : g);
}

// Blocks for a grid-stride loop over n items: enough to fill the GPU, at most 2^20.
inline unsigned grid_stride(int64_t n, int block = kBlock) { return std::min(grid_for(n, block), 1u << 20); }

// Raises a kernel's dynamic shared-memory limit, once per kernel and device
// (the attribute is the current device's: a process that drives a second GPU
// sets it there too).
template <auto Kernel>
void allow_smem(size_t bytes) {
  constexpr int kMaxDevices = 64;
  static std::atomic<bool> done[kMaxDevices];
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kMaxDevices && done[dev].load(std::memory_order_acquire)) return;
  CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  if (dev < kMaxDevices) done[dev].store(true, std::memory_order_release);
}

// A device tensor holding `values` (a small table: offsets, per-group
// constants). Ordered on ctx's stream; a copy from pageable host memory is
// staged before cudaMemcpyAsync returns, so `values` may go right after.
template <class T>
Tensor upload(Ctx& ctx, const std::vector<T>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, dtype_of<T>(), ctx);
  if (!values.empty())
    CUDA_CHECK(cudaMemcpyAsync(t.raw(), values.data(), t.nbytes(), cudaMemcpyHostToDevice, stream(ctx)));
  return t;
}

// Raw bytes (a table of structs) on the device, 8-byte aligned; as upload().
inline Tensor upload_bytes(Ctx& ctx, const void* src, size_t bytes) {
  Tensor t = Tensor::empty({static_cast<int64_t>((bytes + 7) / 8)}, DType::f64, ctx);
  if (bytes > 0) CUDA_CHECK(cudaMemcpyAsync(t.raw(), src, bytes, cudaMemcpyHostToDevice, stream(ctx)));
  return t;
}

// n elements from device memory, after the work queued on ctx's stream.
template <class T>
std::vector<T> download(Ctx& ctx, const T* device, int64_t n) {
  std::vector<T> v(static_cast<size_t>(n));
  if (n > 0) CUDA_CHECK(cudaMemcpyAsync(v.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost, stream(ctx)));
  CUDA_CHECK(cudaStreamSynchronize(stream(ctx)));
  count_host_wait();
  return v;
}

// ---- device helpers -------------------------------------------------------

// Whether p (every one of ps) is 16-byte aligned (a vector load's or store's address).
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
inline bool aligned16(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (!aligned16(p)) return false;
  return true;
}

// V elements of T, loaded and stored as one (aligned as 16 bytes allow): the
// elementwise kernels' packs (ops/cuda/gelu.cu, swiglu.cu).
template <class T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Pack {
  T v[V];
};

// Element access in fp32 arithmetic: kernels templated on the storage type T
// load with to_float and store with from_float<T> (bf16: round to nearest
// even, core/dtype.h's rounding).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// W < 32: over each group of W adjacent lanes (offsets below W never leave
// the group), every lane of the warp taking part.
template <class T, int W = 32>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T, int W = 32>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of blockDim.x (a power of two <= 1024) threads, in a fixed
// tree; every thread gets the result. `scratch` holds blockDim.x values.
template <class T>
__device__ T block_sum(T v, T* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
    __syncthreads();
  }
  const T r = scratch[0];
  __syncthreads();
  return r;
}

template <class T>
__device__ T block_max(T v, T* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) scratch[threadIdx.x] = max(scratch[threadIdx.x], scratch[threadIdx.x + s]);
    __syncthreads();
  }
  const T r = scratch[0];
  __syncthreads();
  return r;
}

// Exclusive prefix sum over a block of blockDim.x threads (any size), for
// integers: thread t gets v_0 + ... + v_{t-1} and *total the sum over every
// thread. Thread 0 adds in thread order (exact; the serial loop is cheap next
// to a one-block kernel's launch, and a CUB BlockScan costs seconds of nvcc
// time per file). `scratch` holds blockDim.x values; free again on return.
template <class T>
__device__ T block_exclusive_sum(T v, T* scratch, T* total) {
  static_assert(std::is_integral<T>::value, "block_exclusive_sum: integers only (exact in any order)");
  __shared__ T sum;
  scratch[threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T run = 0;
    for (unsigned t = 0; t < blockDim.x; ++t) {
      const T s = scratch[t];
      scratch[t] = run;
      run += s;
    }
    sum = run;
  }
  __syncthreads();
  const T before = scratch[threadIdx.x];
  *total = sum;
  __syncthreads();
  return before;
}

// ordered_bits (a float's bits in the float's order): ops/cuda/host_device.h.

// ---- column sums ----------------------------------------------------------
//
// out[o][c] += sum over rows r of f(r, c, v)[o] for o < F::kOut. Stage 1: block
// (x, y) sums rows [y*chunk, (y+1)*chunk) of columns x*256.. serially per
// column into partial (kOut, chunks, cols); stage 2 adds the chunks of 32
// columns a block: warp p sums chunks p, p + 8, p + 16, ... in order, then the
// 8 warps' sums are added in order. (It was one thread per column looping
// over every chunk: 3 blocks for 768 columns, 2 x 256 dependent loads a
// thread - tens of microseconds a call on a GPU otherwise idle, in every
// layer norm's and bias's backward.) With one chunk (rows <= kColumnChunk) the
// serial sum starts from out itself: the CPU reference's order exactly.
// A one-output F with load8 (8 adjacent columns of a row from one 16-byte
// bf16 or two 16-byte fp32 loads) whose vec_ok() holds, and cols % 8 == 0:
// stage 1 gives a thread 8 columns instead of one, each summed in the same
// order (the same bits), with a row's loads 16 bytes wide instead of 2 or 4
// (column_sum_partials8).

constexpr int64_t kColumnChunk = 64;

struct ColumnOut {
  float* p[4];
};

template <class F>
static __global__ void column_sum_partials(F f, int64_t rows, int64_t cols, int64_t chunk, float* partial,
                                           ColumnOut out, bool direct) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
  float acc[F::kOut];
  for (int o = 0; o < F::kOut; ++o) acc[o] = direct ? out.p[o][c] : 0.f;
#pragma unroll 4
  for (int64_t r = r0; r < r1; ++r) {  // (unrolled: the loads of 4 rows in flight at once)
    float v[F::kOut];
    f(r, c, v);
    for (int o = 0; o < F::kOut; ++o) acc[o] += v[o];
  }
  for (int o = 0; o < F::kOut; ++o) {
    if (direct)
      out.p[o][c] = acc[o];
    else
      partial[(o * static_cast<int64_t>(gridDim.y) + blockIdx.y) * cols + c] = acc[o];
  }
}

// v[0..8) = row r's elements c0 .. c0 + 7 at p (16-byte aligned), widened.
__device__ __forceinline__ void load8_at(const float* p, float* v) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
__device__ __forceinline__ void load8_at(const __nv_bfloat16* p, float* v) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x, v[2 * i + 1] = f.y;
  }
}

template <class F, class = void>
struct HasLoad8 : std::false_type {};
template <class F>
struct HasLoad8<F, std::void_t<decltype(&F::load8)>> : std::true_type {};

// column_sum_partials with 8 adjacent columns a thread (F::kOut 1, F::load8).
template <class F>
static __global__ void column_sum_partials8(F f, int64_t rows, int64_t cols, int64_t chunk, float* partial,
                                            float* out, bool direct) {
  const int64_t c0 = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * 8;
  if (c0 >= cols) return;
  const int64_t r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
  float acc[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) acc[j] = direct ? out[c0 + j] : 0.f;
#pragma unroll 4
  for (int64_t r = r0; r < r1; ++r) {
    float v[8];
    f.load8(r, c0, v);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] += v[j];
  }
  float* dst = direct ? out + c0 : partial + blockIdx.y * cols + c0;
#pragma unroll
  for (int j = 0; j < 8; ++j) dst[j] = acc[j];
}

constexpr int kFinishParts = 8;  // warps of a stage-2 block, each a strided share of the chunks

// Block (x, o): output o's columns x*32 .. x*32+31, lane = column. (A
// template, as the rest here, so a file that sums no columns compiles none.)
template <int kParts = kFinishParts>
static __global__ void __launch_bounds__(32 * kParts)
    column_sum_finish(const float* partial, int64_t chunks, int64_t cols, ColumnOut out) {
  __shared__ float part[kParts][32];
  const int o = blockIdx.y, lane = threadIdx.x % 32, p = threadIdx.x / 32;
  const int64_t c = blockIdx.x * int64_t{32} + lane;
  float s = 0.f;
  if (c < cols) {
    const float* src = partial + o * chunks * cols + c;
#pragma unroll 4
    for (int64_t j = p; j < chunks; j += kParts) s += src[j * cols];
  }
  part[p][lane] = s;
  __syncthreads();
  if (p != 0 || c >= cols) return;
  float t = 0.f;
#pragma unroll
  for (int q = 0; q < kParts; ++q) t += part[q][lane];
  float* dst = out.p[0];  // out.p[o] without indexing the parameter (which copies it to the stack)
#pragma unroll
  for (int i = 1; i < 4; ++i)
    if (o == i) dst = out.p[i];
  dst[c] += t;
}

template <class F>
void column_sums(Ctx& ctx, F f, int64_t rows, int64_t cols, ColumnOut out) {
  if (rows == 0 || cols == 0) return;
  int64_t chunk = kColumnChunk;
  while ((rows + chunk - 1) / chunk > 65535) chunk *= 2;
  const int64_t chunks = (rows + chunk - 1) / chunk;
  Tensor partial = chunks > 1 ? Tensor::empty({F::kOut * chunks * cols}, DType::f32, ctx) : Tensor();
  float* const part = chunks > 1 ? partial.data<float>() : nullptr;
  constexpr bool kPacks = F::kOut == 1 && HasLoad8<F>::value;  // (8 columns a thread where f allows)
  bool packed = false;
  if constexpr (kPacks) {
    packed = cols % 8 == 0 && f.vec_ok();
    if (packed) {
      const dim3 grid(grid_for(cols / 8), static_cast<unsigned>(chunks));
      column_sum_partials8<<<grid, kBlock, 0, stream(ctx)>>>(f, rows, cols, chunk, part, out.p[0], chunks == 1);
    }
  }
  if (!packed) {
    const dim3 grid(grid_for(cols), static_cast<unsigned>(chunks));
    column_sum_partials<<<grid, kBlock, 0, stream(ctx)>>>(f, rows, cols, chunk, part, out, chunks == 1);
  }
  CUDA_CHECK(cudaGetLastError());
  if (chunks == 1) return;
  const dim3 fgrid(static_cast<unsigned>((cols + 31) / 32), F::kOut);
  column_sum_finish<<<fgrid, 32 * kFinishParts, 0, stream(ctx)>>>(partial.data<float>(), chunks, cols, out);
  CUDA_CHECK(cudaGetLastError());
}

// The plain case: out[c] += sum_r x[r * ld + c], x fp32 or bf16 (widened:
// the sums, in the same order, of the fp32 tensor it widens to).
template <class T>
struct ColumnOf {
  static constexpr int kOut = 1;
  const T* x;
  int64_t ld;
  __device__ void operator()(int64_t r, int64_t c, float* v) const { v[0] = to_float(x[r * ld + c]); }
  __device__ void load8(int64_t r, int64_t c0, float* v) const { load8_at(x + r * ld + c0, v); }
  bool vec_ok() const { return ld % 8 == 0 && aligned16(x); }
};

template <class T>
void column_sums_into(Ctx& ctx, const T* x, int64_t rows, int64_t cols, float* out) {
  column_sums(ctx, ColumnOf<T>{x, cols}, rows, cols, ColumnOut{{out}});
}

// ---- one thread per index -------------------------------------------------

// f(i) for every i < n, a grid-stride loop (the rows headers' functions).
template <class F>
static __global__ void each_index(int64_t n, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    f(i);
}

// run(n, f) of the rows headers' step sequences: one launch on a stream.
struct Launch {
  cudaStream_t st;
  template <class F>
  void operator()(int64_t n, const F& f) const {
    if (n <= 0) return;
    each_index<<<grid_stride(n), kBlock, 0, st>>>(n, f);
    CUDA_CHECK(cudaGetLastError());
  }
};

// ---- one warp per index ----------------------------------------------------

// The W of the rows headers' warp functions (ops/cuda/routed_attention_rows.h,
// "a warp a row"): this lane, and the butterfly sum over the warp.
struct DeviceWarp {
  __device__ int lane() const { return static_cast<int>(threadIdx.x & 31); }
  __device__ float sum(float x) const { return warp_sum(x); }
};

// f(w, i) for every i < n, a warp each (grid-stride over whole warps, so every
// lane of a warp runs the same i and the same shuffles; blockDim a multiple of 32).
template <class F>
static __global__ void each_warp(int64_t n, F f) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; i < n; i += warps)
    f(DeviceWarp{}, i);
}

// warps(n, f) of the rows headers' step sequences: one launch on a stream.
struct WarpLaunch {
  cudaStream_t st;
  template <class F>
  void operator()(int64_t n, const F& f) const {
    if (n <= 0) return;
    each_warp<<<grid_stride(n * 32), kBlock, 0, st>>>(n, f);  // (kBlock: whole warps)
    CUDA_CHECK(cudaGetLastError());
  }
};

// ---- in util.cu -----------------------------------------------------------

// out[0] = (sum_i x[i]) / divisor for a device f64 array, in a fixed tree of
// fixed chunks, written to device memory on ctx's stream (0 for n = 0): for
// statistics that stay on the device until someone reads them.
void sum_f64(Ctx& ctx, const double* x, int64_t n, double* out, double divisor = 1);
// The same sum (divisor 1), waited for and returned on the host.
double sum_f64_to_host(Ctx& ctx, const double* x, int64_t n);

// starts[s] = first index i of sorted (ascending) keys with (keys[i] >> shift)
// >= s, for s = 0..segments (so segment s is [starts[s], starts[s+1])).
void segment_starts(Ctx& ctx, const uint64_t* keys, int64_t n, int shift, int64_t segments, int32_t* starts);

// Number of bits needed to hold values 0..n-1 (0 for n <= 1).
int bits_for(int64_t n);

// bf16 elements for the packed attention paths' per-element steps
// (ops/cuda/packed_rows.h's F32 is the f32 one): loads widen, stores round.
struct Bf16 {
  using T = __nv_bfloat16;
  static __host__ __device__ float load(T x) { return __bfloat162float(x); }
  static __host__ __device__ T store(float x) { return __float2bfloat16(x); }
};

// A tensor's elements as E's type.
template <class E>
typename E::T* elems(const Tensor& t) {
  return static_cast<typename E::T*>(const_cast<void*>(t.raw()));
}

}  // namespace sy::ops::cuda
