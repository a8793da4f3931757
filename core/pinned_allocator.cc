#include "core/pinned_allocator.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_set>
#include <utility>

#include "core/cuda_check.h"
#include "core/size_class.h"
#include "core/error.h"

namespace sy {

CachingHostAllocator::CachingHostAllocator(Acquire acquire, Release release)
    : acquire_(std::move(acquire)), release_(std::move(release)) {}

CachingHostAllocator::~CachingHostAllocator() {
  for (void* p : all_) release_(p);
}

size_t CachingHostAllocator::block_bytes(size_t bytes) {
  size_t b = size_t{64} << 10;
  while (b < bytes && b < (size_t{1} << 20)) b <<= 1;
  return b >= bytes ? b : static_cast<size_t>(round_up_quarter_octave(bytes));  // (past 1 MiB: 1.25, 1.5, ... MiB)
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

std::unique_ptr<CachingHostAllocator> pinned_host_allocator() {
#ifdef SY_WITH_CUDA
  // The blocks that could not be pinned (ordinary memory, freed as such).
  struct Pageable {
    std::mutex mu;
    std::unordered_set<void*> blocks;
  };
  auto pageable = std::make_shared<Pageable>();
  return std::make_unique<CachingHostAllocator>(
      [pageable](size_t bytes) {
        void* p = nullptr;
        const cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
        if (e == cudaErrorMemoryAllocation) {
          (void)cudaGetLastError();  // (not left for the next check to find)
          static std::atomic<bool> said{false};
          if (!said.exchange(true))
            std::fprintf(stderr,
                         "note: could not page-lock %zu more bytes of host memory; device tensors are staged "
                         "through ordinary memory from here on where pinning fails (slower copies, same results)\n",
                         bytes);
          p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
          std::lock_guard<std::mutex> lock(pageable->mu);
          if (p) pageable->blocks.insert(p);
          return p;
        }
        CUDA_CHECK(e);
        return p;
      },
      [pageable](void* p) {
        std::unique_lock<std::mutex> lock(pageable->mu);
        const bool ordinary = pageable->blocks.erase(p) > 0;
        lock.unlock();
        if (ordinary) std::free(p);
        else cudaFreeHost(p);
      });
#else
  return std::make_unique<CachingHostAllocator>(
      [](size_t) -> void* {
        throw BackendError("page-locked host memory needs the CUDA backend (configure with SWITCHYARD_CUDA=ON)");
      },
      [](void*) {});
#endif
}

}  // namespace sy
