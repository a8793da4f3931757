// A read-only memory mapping of a whole file (RAII: unmapped and closed when
// the object goes). Token shards are read through one: the kernel pages in
// only what the sampled windows touch, and every rank on a machine shares
// the page cache instead of holding its own copy.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace sy {

class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path`; ConfigError naming the path when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }  // null for an empty file
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void release();
  std::string path_;
  const unsigned char* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace sy
