// Host memory for staging device tensors (comm/mpi_communicator.cc, which
// moves a device tensor through the host when several ranks share a GPU).
//
// CachingHostAllocator keeps every block it is handed back and reuses it:
// blocks come in size classes (powers of two from 64 KiB to 1 MiB, then four
// to an octave: at most 25% over what was asked for), a request takes a
// free block of its class or a new one, and nothing goes back to the system
// before the allocator is destroyed (what it holds is reserved()).
// Caching is the point for page-locked memory: cudaHostAlloc pins pages and
// costs milliseconds per call, which per collective would cost more than the
// copy it speeds up. What backs the blocks is a pair of functions, so the
// caching is tested on the host with malloc (tests/tensor_test.cc). A block
// is reused as soon as its tensor is freed: the caller's copies into and out
// of it must be done by then (Tensor::copy_from waits for any copy that
// touches host memory, core/tensor.cc).
//
// pinned_host_allocator() backs it with cudaHostAlloc: copies between the
// device and page-locked memory run at the link's DMA rate, where pageable
// memory goes through the driver's bounce buffer in pieces. Where the system
// will not pin more, a block is ordinary (pageable) memory instead: slower
// copies, the same results (said once on stderr). Its tensors are host tensors (device() is the
// CPU). Without the CUDA backend, or without a GPU, its first allocation
// throws BackendError.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/allocator.h"

namespace sy {

class CachingHostAllocator final : public Allocator {
 public:
  using Acquire = std::function<void*(size_t bytes)>;
  using Release = std::function<void(void* p)>;
  CachingHostAllocator(Acquire acquire, Release release);
  ~CachingHostAllocator() override;
  CachingHostAllocator(const CachingHostAllocator&) = delete;
  CachingHostAllocator& operator=(const CachingHostAllocator&) = delete;

  Device device() const override { return Device::cpu(); }
  void* allocate(size_t bytes, Stream stream) override;
  void deallocate(void* p, size_t bytes, Stream stream) override;
  // Bytes held from the system (blocks in use and cached), and their peak.
  size_t reserved() const;
  size_t reserved_high() const override;
  // The block a request of `bytes` takes (its size class).
  static size_t block_bytes(size_t bytes);

 private:
  Acquire acquire_;
  Release release_;
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // by block size
  std::vector<void*> all_;
  size_t reserved_ = 0, reserved_high_ = 0;
};

// A CachingHostAllocator over page-locked memory (cudaHostAlloc / cudaFreeHost).
std::unique_ptr<CachingHostAllocator> pinned_host_allocator();

}  // namespace sy
