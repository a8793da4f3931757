#include "core/pinned_allocator.h"

#include <new>

#include "core/cuda_check.h"
#include "core/error.h"

namespace sy {

CachingHostAllocator::CachingHostAllocator(Acquire acquire, Release release)
    : acquire_(std::move(acquire)), release_(std::move(release)) {}

CachingHostAllocator::~CachingHostAllocator() {
  for (void* p : all_) release_(p);
}

size_t CachingHostAllocator::block_bytes(size_t bytes) {
  size_t b = size_t{64} << 10;
  while (b < bytes) b <<= 1;
  return b;
}

void* CachingHostAllocator::allocate(size_t bytes, Stream) {
  const size_t b = block_bytes(bytes);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& list = free_[b];
    if (!list.empty()) {
      p = list.back();
      list.pop_back();
    }
  }
  if (!p) {
    p = acquire_(b);  // outside the lock: pinning takes milliseconds
    if (!p) throw std::bad_alloc();
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(p);
    reserved_ += b;
    if (reserved_ > reserved_high_) reserved_high_ = reserved_;
  }
  count_alloc(bytes);
  return p;
}

void CachingHostAllocator::deallocate(void* p, size_t bytes, Stream) {
  std::lock_guard<std::mutex> lock(mu_);
  free_[block_bytes(bytes)].push_back(p);
  count_free(bytes);
}

size_t CachingHostAllocator::reserved() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_;
}

size_t CachingHostAllocator::reserved_high() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_high_;
}

std::unique_ptr<Allocator> pinned_host_allocator() {
#ifdef SY_WITH_CUDA
  return std::make_unique<CachingHostAllocator>(
      [](size_t bytes) {
        void* p = nullptr;
        CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
        return p;
      },
      [](void* p) { cudaFreeHost(p); });
#else
  return std::make_unique<CachingHostAllocator>(
      [](size_t) -> void* {
        throw BackendError("page-locked host memory needs the CUDA backend (configure with SWITCHYARD_CUDA=ON)");
      },
      [](void*) {});
#endif
}

}  // namespace sy
