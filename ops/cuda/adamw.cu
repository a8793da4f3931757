// AdamW, gradient norm and clipping on CUDA.
//
// adamw_update: multi-tensor, one launch for the whole list (four elements
//   a thread in 16-byte accesses where the tensors are aligned, as the
//   allocator leaves them: at 74% of the copy rate on the H200 with one
//   element a thread). A table of the
//   parameters (pointers, sizes, weight decay, first block, the bf16 shadow
//   or null) goes to the device
//   once per call; block b finds its parameter by binary search over the
//   first-block column and updates a chunk of kChunk elements. Elementwise per
//   element: deterministic. Bias corrections are computed on the host with the
//   CPU's float expression. The shadow gets __float2bfloat16_rn of the new w
//   in the same pass (round to nearest even, as the CPU's f32_to_bf16).
// grad_sq_sum: stage 1, block b of a tensor sums the squares of a fixed chunk
//   in double (strided per thread, then a fixed tree); stage 2 is
//   sum_f64_to_host over all tensors' partials, in order: deterministic, and
//   one synchronisation.
// clip_to_norm: decided on the host from the norm, then cuda::scale per tensor.
//   (Training passes the factor to adamw_update instead: AdamWConfig::grad_scale.)
#include <cuda_bf16.h>

#include "ops/adamw.h"
#include "ops/cuda/common.cuh"
#include "ops/elementwise.h"

#include <cmath>

namespace sy::ops::cuda {

namespace {
constexpr int64_t kChunk = 8 * kBlock;  // elements per block

struct AdamWEntry {
  float* w;
  const float* g;
  float* m;
  float* v;
  __nv_bfloat16* shadow;  // or null
  int64_t n;
  int64_t first_block;
  float wd;
  bool vec;  // every pointer 16-byte aligned (the shadow 8): four elements a thread
};

struct AdamWStep {
  float lr, beta1, beta2, eps, bc1, bc2, grad_scale;
};
}  // namespace

// One element's update (the CPU's expressions in the CPU's order): g, m, v,
// w in; m, v, w out.
static __device__ __forceinline__ void adamw_one(const AdamWStep& s, float wd, float g_in, float& m, float& v,
                                                 float& w) {
  const float g = __fmul_rn(g_in, s.grad_scale);  // (clip_scale's factor, rounded once: clip_to_norm's bits)
  m = s.beta1 * m + (1.f - s.beta1) * g;
  v = s.beta2 * v + (1.f - s.beta2) * g * g;
  const float mhat = m / s.bc1, vhat = v / s.bc2;
  w = w - s.lr * (mhat / (sqrtf(vhat) + s.eps) + wd * w);
}

static __global__ void adamw_kernel(const AdamWEntry* table, int entries, AdamWStep s) {
  int lo = 0, hi = entries - 1;  // last entry with first_block <= blockIdx.x
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid].first_block <= static_cast<int64_t>(blockIdx.x))
      lo = mid;
    else
      hi = mid - 1;
  }
  const AdamWEntry e = table[lo];
  const int64_t begin = (blockIdx.x - e.first_block) * kChunk, end = min(e.n, begin + kChunk);
  int64_t scalar = begin;  // where the one-element-a-thread loop starts
  if (e.vec) {
    // Four elements a thread as one 16-byte access of each array (8 bytes of
    // the shadow): a quarter of the memory instructions, the same arithmetic
    // element by element. kChunk is a multiple of 4, so are the quads; the
    // chunk's last n % 4 elements fall to the loop below.
    scalar = begin + (end - begin) / 4 * 4;
    for (int64_t q = begin + 4 * static_cast<int64_t>(threadIdx.x); q < scalar; q += 4 * static_cast<int64_t>(blockDim.x)) {
      const float4 g = *reinterpret_cast<const float4*>(e.g + q);
      float4 m = *reinterpret_cast<const float4*>(e.m + q), v = *reinterpret_cast<const float4*>(e.v + q);
      float4 w = *reinterpret_cast<const float4*>(e.w + q);
      adamw_one(s, e.wd, g.x, m.x, v.x, w.x);
      adamw_one(s, e.wd, g.y, m.y, v.y, w.y);
      adamw_one(s, e.wd, g.z, m.z, v.z, w.z);
      adamw_one(s, e.wd, g.w, m.w, v.w, w.w);
      *reinterpret_cast<float4*>(e.m + q) = m;
      *reinterpret_cast<float4*>(e.v + q) = v;
      *reinterpret_cast<float4*>(e.w + q) = w;
      if (e.shadow) {
        const __nv_bfloat162 lo2 = __floats2bfloat162_rn(w.x, w.y), hi2 = __floats2bfloat162_rn(w.z, w.w);
        uint2 packed;
        packed.x = *reinterpret_cast<const uint32_t*>(&lo2);
        packed.y = *reinterpret_cast<const uint32_t*>(&hi2);
        *reinterpret_cast<uint2*>(e.shadow + q) = packed;
      }
    }
  }
  for (int64_t i = scalar + threadIdx.x; i < end; i += blockDim.x) {
    float m = e.m[i], v = e.v[i], w = e.w[i];
    adamw_one(s, e.wd, e.g[i], m, v, w);
    e.m[i] = m, e.v[i] = v, e.w[i] = w;
    if (e.shadow) e.shadow[i] = __float2bfloat16_rn(w);
  }
}

static __global__ void sq_partials(const float* x, int64_t n, double* partial) {
  __shared__ double scratch[kBlock];
  const int64_t begin = blockIdx.x * kChunk, end = min(n, begin + kChunk);
  double s = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += static_cast<double>(x[i]) * x[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

void adamw_update(Ctx& ctx, const std::vector<AdamWParam>& params, const AdamWConfig& c, int64_t step) {
  std::vector<AdamWEntry> table;
  int64_t blocks = 0;
  for (const AdamWParam& p : params) {
    const int64_t n = p.value->numel();
    if (n == 0) continue;
    auto aligned = [](const void* q, uintptr_t a) { return reinterpret_cast<uintptr_t>(q) % a == 0; };
    const bool vec = aligned(p.value->raw(), 16) && aligned(p.grad->raw(), 16) && aligned(p.m->raw(), 16) &&
                     aligned(p.v->raw(), 16) && (!p.shadow || aligned(p.shadow->raw(), 8));
    table.push_back({p.value->data<float>(), p.grad->data<float>(), p.m->data<float>(), p.v->data<float>(),
                     p.shadow ? static_cast<__nv_bfloat16*>(p.shadow->raw()) : nullptr, n, blocks,
                     p.decay ? c.weight_decay : 0.f, vec});
    blocks += (n + kChunk - 1) / kChunk;
  }
  if (table.empty()) return;
  SY_CHECK(blocks < (int64_t{1} << 31), "adamw: " << blocks << " blocks");
  const AdamWStep s{c.lr, c.beta1, c.beta2, c.eps, 1.f - std::pow(c.beta1, static_cast<float>(step)),
                    1.f - std::pow(c.beta2, static_cast<float>(step)), c.grad_scale};
  const Tensor dev = upload_bytes(ctx, table.data(), table.size() * sizeof(AdamWEntry));
  adamw_kernel<<<static_cast<unsigned>(blocks), kBlock, 0, stream(ctx)>>>(
      reinterpret_cast<const AdamWEntry*>(dev.raw()), static_cast<int>(table.size()), s);
  CUDA_CHECK(cudaGetLastError());
}

double grad_sq_sum(Ctx& ctx, const std::vector<const Tensor*>& grads) {
  int64_t blocks = 0;
  for (const Tensor* g : grads) blocks += (g->numel() + kChunk - 1) / kChunk;
  if (blocks == 0) return 0.0;
  Tensor partial = Tensor::empty({blocks}, DType::f64, ctx);
  int64_t at = 0;
  for (const Tensor* g : grads) {
    const int64_t b = (g->numel() + kChunk - 1) / kChunk;
    if (b == 0) continue;
    sq_partials<<<static_cast<unsigned>(b), kBlock, 0, stream(ctx)>>>(g->data<float>(), g->numel(),
                                                                     partial.data<double>() + at);
    CUDA_CHECK(cudaGetLastError());
    at += b;
  }
  return sum_f64_to_host(ctx, partial.data<double>(), blocks);
}

void clip_to_norm(Ctx& ctx, const std::vector<Tensor*>& grads, float norm, float max_norm) {
  const float k = clip_scale(norm, max_norm);
  if (k == 1.f) return;
  for (Tensor* g : grads) cuda::scale(ctx, *g, k);
}

}  // namespace sy::ops::cuda
