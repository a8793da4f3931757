#include "runtime/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "runtime/output_file.h"

namespace sy {

namespace {

static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE-754 floats");

bool little_endian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw ConfigError(path + ": " + what); }

// Element sizes of the format's dtypes (all of them, so a file with another
// type is reported by name rather than as a broken header).
int64_t element_bytes(const std::string& dtype) {
  static const std::map<std::string, int64_t> sizes = {
      {"BOOL", 1}, {"U8", 1}, {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},    {"I64", 8},     {"U64", 8}, {"F64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

bool dtype_from_name(const std::string& s, DType& t) {
  for (DType d : {DType::f32, DType::bf16, DType::i32, DType::i64, DType::f64})
    if (s == safetensors_dtype(d)) return t = d, true;
  return false;
}

}  // namespace

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::f64: return "F64";
  }
  return "?";
}

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;  // reflected 0x04C11DB7
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

FileDigest write_safetensors(const std::string& path, const NamedTensors& tensors,
                             const std::map<std::string, std::string>& metadata) {
  SY_CHECK(little_endian(), "safetensors: this writer assumes a little-endian host");
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    SY_CHECK(t.device().is_cpu(), "safetensors: " << name << " is not a host tensor");
    SY_CHECK(!header.contains(name) && name != "__metadata__", "safetensors: duplicate tensor name " << name);
    header[name] = {{"dtype", safetensors_dtype(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  const uint64_t n = text.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, std::string("cannot create: ") + std::strerror(errno));
  struct Closer {  // a failed write or fsync throws; the descriptor closes either way
    int fd;
    ~Closer() {
      if (fd >= 0) ::close(fd);
    }
  } closer{fd};
  FileDigest d;
  auto put = [&](const void* p, size_t bytes) {
    write_fully(fd, p, bytes, path);
    d.crc32 = crc32_update(d.crc32, p, bytes);
    d.bytes += bytes;
  };
  put(len, 8);
  put(text.data(), text.size());
  for (const auto& [name, t] : tensors) {
    put(t.raw(), t.nbytes());
    d.tensor_crc32.push_back(crc32_update(0, t.raw(), t.nbytes()));
  }
  if (::fsync(fd) != 0) fail(path, std::string("fsync failed: ") + std::strerror(errno));
  closer.fd = -1;
  if (::close(fd) != 0) fail(path, std::string("close failed: ") + std::strerror(errno));
  return d;
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  SY_CHECK(little_endian(), "safetensors: this reader assumes a little-endian host");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, "missing or unreadable");
  file_bytes_ = static_cast<uint64_t>(in.tellg());
  if (file_bytes_ < 8) fail(path, "truncated: " + std::to_string(file_bytes_) + " bytes, not even a header length");
  in.seekg(0);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > (100u << 20) || n > file_bytes_ - 8)
    fail(path, "truncated or not safetensors: header of " + std::to_string(n) + " bytes in a file of " +
                   std::to_string(file_bytes_));
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  if (!in) fail(path, "cannot read the header");
  data_start_ = 8 + n;
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    fail(path, "header is not JSON (truncated or not safetensors)");
  }
  if (!h.is_object()) fail(path, "header is not a JSON object");
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail(path, "__metadata__ " + printable(m.key(), 80) + " is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    // Names and dtypes are the file's bytes: printed escaped, so a refusal stays one line.
    const std::string where = "tensor " + printable(name, 120);
    TensorRecord r;
    r.name = name;
    if (!v.is_object() || !v.contains("dtype") || !v["dtype"].is_string() || !v.contains("shape") ||
        !v["shape"].is_array() || !v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2)
      fail(path, where + ": entry lacks dtype, shape or data_offsets");
    r.dtype = v["dtype"].get<std::string>();
    const uint64_t eb = static_cast<uint64_t>(element_bytes(r.dtype));
    if (eb == 0) fail(path, where + ": unknown dtype " + printable(r.dtype, 40));
    // The size in bytes, dtype size x the product of the shape, computed
    // without wrapping and no more than the file holds: a shape that wraps to
    // a small count would pass the offsets check and then be allocated.
    uint64_t bytes = eb;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) fail(path, where + ": shape holds a negative or non-integer size");
      const uint64_t n = d.get<uint64_t>();
      if (n > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(bytes, n, &bytes))
        fail(path, where + ": shape " + printable(v["shape"].dump(), 120) + " of " + r.dtype +
                       " overflows a 64-bit byte count");
      r.shape.push_back(static_cast<int64_t>(n));
    }
    if (bytes > file_bytes_ - data_start_)
      fail(path, where + ": shape " + shape_str(r.shape) + " of " + r.dtype + " is " + std::to_string(bytes) +
                     " bytes, more than the file's " + std::to_string(file_bytes_ - data_start_) +
                     " bytes of data (truncated?)");
    for (const auto& o : v["data_offsets"])
      if (!o.is_number_unsigned()) fail(path, where + ": data_offsets are not non-negative integers");
    r.begin = v["data_offsets"][0].get<uint64_t>();
    r.end = v["data_offsets"][1].get<uint64_t>();
    if (r.end < r.begin || r.end - r.begin != bytes)
      fail(path, where + ": data_offsets [" + std::to_string(r.begin) + ", " + std::to_string(r.end) +
                     ") do not hold " + r.dtype + " " + shape_str(r.shape));
    tensors_.push_back(std::move(r));
  }
  // The tensors tile the data region exactly.
  std::vector<const TensorRecord*> order;
  for (const auto& t : tensors_) order.push_back(&t);
  // By (begin, end): an empty tensor at another's start comes first.
  std::sort(order.begin(), order.end(),
            [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  uint64_t at = 0;
  for (const TensorRecord* t : order) {
    if (t->begin != at)
      fail(path, "tensor " + printable(t->name, 120) + ": data starts at " + std::to_string(t->begin) + ", expected " +
                     std::to_string(at) + " (hole or overlap)");
    at = t->end;
  }
  if (data_start_ + at != file_bytes_)
    fail(path, (data_start_ + at > file_bytes_ ? "truncated: " : "trailing bytes: ") + std::to_string(file_bytes_) +
                   " bytes, the header describes " + std::to_string(data_start_ + at) +
                   (order.empty() ? std::string() : " (last tensor " + printable(order.back()->name, 120) + ")"));
}

const TensorRecord* SafetensorsReader::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

DType SafetensorsReader::loadable(const TensorRecord& r) const {
  DType dt;
  if (!dtype_from_name(r.dtype, dt))
    fail(path_, "tensor " + printable(r.name, 120) + ": dtype " + printable(r.dtype, 40) + " cannot be loaded");
  return dt;
}

void SafetensorsReader::read_bytes(const TensorRecord& r, uint64_t offset, void* dst, size_t bytes) const {
  std::ifstream in(path_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_start_ + r.begin + offset));
  in.read(static_cast<char*>(dst), static_cast<std::streamsize>(bytes));
  if (!in) fail(path_, "tensor " + printable(r.name, 120) + ": cannot read its bytes (file changed while reading?)");
}

Tensor SafetensorsReader::read(const TensorRecord& r) const {
  Tensor t = Tensor::empty(r.shape, loadable(r), host_ctx());
  read_bytes(r, 0, t.raw(), t.nbytes());
  return t;
}

Tensor SafetensorsReader::read_range(const TensorRecord& r, int64_t first, int64_t n) const {
  const DType dt = loadable(r);
  const int64_t esize = static_cast<int64_t>(dtype_size(dt)), numel = static_cast<int64_t>(r.end - r.begin) / esize;
  SY_CHECK(first >= 0 && n >= 0 && first + n <= numel,
           "elements [" << first << ", " << first + n << ") of " << r.name << " (" << numel << ")");
  Tensor t = Tensor::empty({n}, dt, host_ctx());
  read_bytes(r, static_cast<uint64_t>(first * esize), t.raw(), t.nbytes());
  return t;
}

Tensor SafetensorsReader::read_f32(const TensorRecord& r) const {
  if (r.dtype != "F16") {
    Tensor t = read(r);
    if (t.dtype() != DType::f32 && t.dtype() != DType::bf16)
      fail(path_, "tensor " + printable(r.name, 120) + ": dtype " + r.dtype + ", not F32, BF16 or F16");
    return t.dtype() == DType::f32 ? t : t.to(DType::f32);
  }
  std::vector<uint16_t> half((r.end - r.begin) / 2);  // (little-endian, as the constructor checked)
  read_bytes(r, 0, half.data(), half.size() * 2);
  Tensor t = Tensor::empty(r.shape, DType::f32, host_ctx());
  float* v = t.data<float>();
  for (size_t i = 0; i < half.size(); ++i) v[i] = f16_to_f32(half[i]);
  return t;
}

uint32_t SafetensorsReader::crc32(const TensorRecord& r) const {
  std::ifstream in(path_, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(data_start_ + r.begin));
  std::vector<char> buf(r.end - r.begin);
  in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
  if (!in) fail(path_, "tensor " + printable(r.name, 120) + ": cannot read its bytes (file changed while reading?)");
  return crc32_update(0, buf.data(), buf.size());
}

FileDigest SafetensorsReader::digest() const {
  std::ifstream in(path_, std::ios::binary);
  FileDigest d;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<size_t>(in.gcount());
    d.crc32 = crc32_update(d.crc32, buf.data(), got);
    d.bytes += got;
  }
  return d;
}

}  // namespace sy
