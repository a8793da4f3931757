// Allocator: where a Tensor's storage comes from. Every allocation is tied to
// a stream (stream-ordered: memory freed on a stream may be reused by later
// work on that stream without a device synchronisation); the host allocator
// ignores the stream. Allocators count the bytes they hand out and the
// high-water mark, which metrics report.
#pragma once
#include <atomic>
#include <cstddef>

#include "core/device.h"

namespace sy {

// A CUDA stream (cudaStream_t) or nothing on the host. Null is the default
// stream of the device.
struct Stream {
  void* handle = nullptr;
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  virtual void* allocate(size_t bytes, Stream stream) = 0;
  virtual void deallocate(void* p, size_t bytes, Stream stream) = 0;

  size_t bytes_in_use() const { return in_use_.load(); }
  size_t high_water() const { return high_water_.load(); }
  // The most memory the allocator has held from the system at once: its
  // high water plus rounding, fragmentation and cached free blocks (a CUDA
  // pool's reserved high; 0 where not known). What out-of-memory depends on.
  virtual size_t reserved_high() const { return 0; }
  void reset_high_water() { high_water_.store(in_use_.load()); }

 protected:
  void count_alloc(size_t bytes);
  void count_free(size_t bytes) { in_use_ -= bytes; }

 private:
  std::atomic<size_t> in_use_{0}, high_water_{0};
};

// 64-byte aligned host memory (one cache line; what AVX-512 loads want).
Allocator& host_allocator();

}  // namespace sy
