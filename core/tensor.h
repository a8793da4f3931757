// Tensor: a contiguous, row-major n-d array on one device.
//
// Storage is reference-counted: copying a Tensor shares its buffer (like a
// view); clone() copies the data. Moving data between devices is always
// explicit (to(Device)). dtype f32 is what the CPU ops compute in; bf16 is a
// storage format (GPU GEMM inputs) converted explicitly with to(DType).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace sy {

enum class DType { f32, bf16 };
enum class Device { cpu, cuda };

const char* dtype_name(DType t);
const char* device_name(Device d);
size_t dtype_size(DType t);

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);

// True where the binary has the CUDA backend and a GPU is visible.
bool cuda_available();

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled tensor of the given shape.
  explicit Tensor(Shape shape, DType dtype = DType::f32, Device device = Device::cpu);

  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool defined() const { return static_cast<bool>(storage_); }

  // Typed host access; throws unless the tensor is f32 (or bf16) on the CPU.
  float* f32();
  const float* f32() const;
  uint16_t* bf16();
  const uint16_t* bf16() const;
  void* raw() { return storage_.get(); }
  const void* raw() const { return storage_.get(); }

  // Same storage, new shape with the same number of elements.
  Tensor reshape(Shape shape) const;
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;  // CPU only: f32 <-> bf16 (round to nearest even)
  void zero();
  void fill(float v);  // f32 on CPU

 private:
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  std::shared_ptr<void> storage_;
};

// Throws ShapeError "<what>: expected [a, b], got [c, d]" when shapes differ.
void check_shape(const Tensor& t, const Shape& expected, const char* what);

// bf16 <-> f32 conversion, round to nearest even.
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t b);

}  // namespace sy
