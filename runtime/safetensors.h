// safetensors (the Hugging Face format, huggingface/safetensors): the file
// format of checkpoints. A file is
//
//   8 bytes   N: the header's length, a little-endian u64
//   N bytes   a JSON object, padded with spaces to a multiple of 8:
//               {"<name>": {"dtype": "F32", "shape": [d0, d1], "data_offsets": [begin, end]}, ...,
//                "__metadata__": {"<key>": "<string value>", ...}}
//   the data  each tensor's bytes (row-major, little-endian) at [begin, end) of
//             this region; together the tensors cover it with no hole or overlap
//
// so a reader in any language needs a JSON parser and nothing else
// (scripts/check_checkpoint.py reads it with Python's struct and json).
// Host tensors only: the caller copies device tensors to the host, so a device
// backend adds copies and nothing here.
//
// Every failure is a ConfigError (bad input, exit 2) of one line naming the
// file and, where there is one, the tensor.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace sy {

// "F32", "BF16", "I32", "I64", "F64" (the format's names).
const char* safetensors_dtype(DType t);

struct TensorRecord {
  std::string name;
  std::string dtype;  // the format's name, as found (may be one this build cannot hold)
  Shape shape;
  uint64_t begin = 0, end = 0;  // data_offsets
};

// A file's size and CRC-32 (the zlib / PNG polynomial: Python's zlib.crc32),
// and each tensor's CRC-32 in the order their bytes lie in the file.
struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
  std::vector<uint32_t> tensor_crc32;
};
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes host tensors in order to `path` (replacing it) and fsyncs the file.
FileDigest write_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata = {});

// A parsed header, checked: offsets within the file and in order, every byte
// of the data region covered once, sizes equal to dtype size x shape.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  const std::string& path() const { return path_; }
  const std::vector<TensorRecord>& tensors() const { return tensors_; }
  const TensorRecord* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_bytes() const { return file_bytes_; }
  // One tensor's bytes as a new host tensor (its dtype must be one this build holds).
  Tensor read(const TensorRecord& t) const;
  // Elements [first, first + n) of a tensor taken flat, as a new 1-D host
  // tensor of its dtype (only those bytes are read).
  Tensor read_range(const TensorRecord& t, int64_t first, int64_t n) const;
  // A floating-point tensor (F32, BF16, or F16, which no tensor holds) as a
  // new f32 host tensor, widened exactly.
  Tensor read_f32(const TensorRecord& t) const;
  // CRC-32 of one tensor's bytes.
  uint32_t crc32(const TensorRecord& t) const;
  // Size and CRC-32 of the whole file (reads it; no per-tensor CRCs).
  FileDigest digest() const;

 private:
  DType loadable(const TensorRecord& t) const;  // its dtype, or one line: one this build cannot hold
  // `bytes` of the tensor's data from `offset` on into dst.
  void read_bytes(const TensorRecord& t, uint64_t offset, void* dst, size_t bytes) const;
  std::string path_;
  std::vector<TensorRecord> tensors_;
  std::map<std::string, std::string> metadata_;
  uint64_t file_bytes_ = 0, data_start_ = 0;
};

}  // namespace sy
