#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/cuda_check.h"

namespace sy {

const char* dtype_name(DType t) { return t == DType::f32 ? "f32" : "bf16"; }
const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }
size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

bool cuda_available() {
#ifdef SY_WITH_CUDA
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

namespace {

std::shared_ptr<void> allocate(size_t bytes, Device device) {
  size_t n = std::max<size_t>(bytes, 1);
  if (device == Device::cpu) {
    void* p = std::calloc(n, 1);
    if (!p) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
    return std::shared_ptr<void>(p, std::free);
  }
#ifdef SY_WITH_CUDA
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, n));
  CUDA_CHECK(cudaMemset(p, 0, n));
  return std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
#else
  throw Error("this build of Switchyard has no CUDA backend (configure with SWITCHYARD_CUDA=ON)");
#endif
}

}  // namespace

Tensor::Tensor(Shape shape, DType dtype, Device device)
    : shape_(std::move(shape)), dtype_(dtype), device_(device) {
  numel_ = 1;
  for (int64_t d : shape_) {
    if (d < 0) throw ShapeError("negative dimension in shape " + shape_str(shape_));
    numel_ *= d;
  }
  storage_ = allocate(nbytes(), device_);
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  if (j < 0 || j >= n)
    throw ShapeError("dim " + std::to_string(i) + " out of range for shape " + shape_str(shape_));
  return shape_[j];
}

float* Tensor::f32() {
  if (dtype_ != DType::f32 || device_ != Device::cpu)
    throw ShapeError(std::string("f32() on a ") + dtype_name(dtype_) + " " + device_name(device_) +
                     " tensor; host f32 access needs an f32 cpu tensor");
  return static_cast<float*>(storage_.get());
}
const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }

uint16_t* Tensor::bf16() {
  if (dtype_ != DType::bf16 || device_ != Device::cpu)
    throw ShapeError(std::string("bf16() on a ") + dtype_name(dtype_) + " " +
                     device_name(device_) + " tensor");
  return static_cast<uint16_t*>(storage_.get());
}
const uint16_t* Tensor::bf16() const { return const_cast<Tensor*>(this)->bf16(); }

Tensor Tensor::reshape(Shape shape) const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != numel_)
    throw ShapeError("reshape: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t(shape_, dtype_, device_);
  if (device_ == Device::cpu) {
    std::memcpy(t.raw(), raw(), nbytes());
  } else {
#ifdef SY_WITH_CUDA
    CUDA_CHECK(cudaMemcpy(t.raw(), raw(), nbytes(), cudaMemcpyDeviceToDevice));
#endif
  }
  return t;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return clone();
  Tensor t(shape_, dtype_, device);
#ifdef SY_WITH_CUDA
  auto kind = device == Device::cuda ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  CUDA_CHECK(cudaMemcpy(t.raw(), raw(), nbytes(), kind));
#endif
  return t;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float bf16_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

Tensor Tensor::to(DType dtype) const {
  if (device_ != Device::cpu) throw ShapeError("dtype conversion is implemented on the CPU only");
  if (dtype == dtype_) return clone();
  Tensor t(shape_, dtype, Device::cpu);
  if (dtype == DType::bf16) {
    const float* src = f32();
    uint16_t* dst = t.bf16();
    for (int64_t i = 0; i < numel_; ++i) dst[i] = f32_to_bf16(src[i]);
  } else {
    const uint16_t* src = bf16();
    float* dst = t.f32();
    for (int64_t i = 0; i < numel_; ++i) dst[i] = bf16_to_f32(src[i]);
  }
  return t;
}

void Tensor::zero() {
  if (device_ == Device::cpu) {
    std::memset(raw(), 0, nbytes());
  } else {
#ifdef SY_WITH_CUDA
    CUDA_CHECK(cudaMemset(raw(), 0, nbytes()));
#endif
  }
}

void Tensor::fill(float v) {
  float* p = f32();
  std::fill(p, p + numel_, v);
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  if (t.shape() != expected)
    throw ShapeError(std::string(what) + ": expected " + shape_str(expected) + ", got " +
                     shape_str(t.shape()));
}

}  // namespace sy
