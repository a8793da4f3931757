// The small pieces of core/: dtype names, devices, the host allocator and context.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/context.h"
#include "core/cuda_check.h"
#include "core/dtype.h"

namespace sy {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::f64: return "f64";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::f64: return 8;
  }
  return 0;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float bf16_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with its payload
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (mant << 13);  // (rebias: 127 - 15)
  } else {
    // zero or subnormal: mant x 2^-24, exact in float (a product of a
    // 10-bit integer and a power of two)
    float f = static_cast<float>(mant) * 0x1p-24f;
    std::memcpy(&u, &f, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

int cuda_device_count() {
#ifdef SY_WITH_CUDA
  static const int count = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  }();
  return count;
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

int node_rank_gpu(int node_rank) {
  const int gpus = cuda_device_count();
  return gpus > 0 ? node_rank % gpus : -1;
}

double cuda_device_memory_bytes(int index) {
#ifdef SY_WITH_CUDA
  cudaDeviceProp p;
  if (index < 0 || index >= cuda_device_count() || cudaGetDeviceProperties(&p, index) != cudaSuccess) return 0;
  return static_cast<double>(p.totalGlobalMem);
#else
  (void)index;
  return 0;
#endif
}

void Allocator::count_alloc(size_t bytes) {
  const size_t now = in_use_ += bytes;
  size_t hw = high_water_.load();
  while (now > hw && !high_water_.compare_exchange_weak(hw, now)) {
  }
}

namespace {

class HostAllocator final : public Allocator {
 public:
  Device device() const override { return Device::cpu(); }
  void* allocate(size_t bytes, Stream) override {
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
    count_alloc(bytes);
    return p;
  }
  void deallocate(void* p, size_t bytes, Stream) override {
    std::free(p);
    count_free(bytes);
  }
};

}  // namespace

Allocator& host_allocator() {
  static HostAllocator a;
  return a;
}

Ctx& host_ctx() {
  static Ctx c{Device::cpu(), Stream{}, &host_allocator(), BlasHandle{}};
  return c;
}

Ctx host_ctx_on(const Ctx& ordered) {
  Ctx c = host_ctx();
  c.stream = ordered.stream;
  return c;
}

namespace {
std::atomic<int64_t> waits{0};
}  // namespace

int64_t host_waits() { return waits.load(); }
void count_host_wait() { ++waits; }

}  // namespace sy
