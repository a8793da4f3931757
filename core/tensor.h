// Tensor: a contiguous, row-major n-d array on one device.
//
// Storage is reference-counted: copying a Tensor shares its bytes (a view);
// reshape() and rows() are views too; clone() copies. Storage comes from the
// Ctx's allocator and is not initialised by empty(); zeros() fills it.
// Moving data between devices is always explicit (to(ctx)). Typed access,
// data<T>(), checks the dtype and returns a device pointer for device tensors;
// f32() is the host shorthand the CPU reference uses.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/dtype.h"
#include "core/error.h"

namespace sy {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  // Uninitialised storage on ctx's device, from ctx's allocator, ordered on ctx's stream.
  static Tensor empty(Shape shape, DType dtype, const Ctx& ctx);
  static Tensor zeros(Shape shape, DType dtype, const Ctx& ctx);
  // A host tensor holding `values` (shape defaults to 1-d).
  template <class T>
  static Tensor from_host(const std::vector<T>& values, Shape shape = {});

  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool defined() const { return static_cast<bool>(storage_); }

  // Typed pointer (host or device); throws ShapeError on a dtype mismatch.
  template <class T>
  T* data();
  template <class T>
  const T* data() const;
  // Host f32 access; throws unless the tensor is f32 on the CPU.
  float* f32();
  const float* f32() const;
  void* raw() { return static_cast<char*>(storage_.get()) + offset_; }
  const void* raw() const { return static_cast<const char*>(storage_.get()) + offset_; }

  // Same storage, new shape with the same number of elements.
  Tensor reshape(Shape shape) const;
  // Same storage, rows [begin, end) of dim 0.
  Tensor rows(int64_t begin, int64_t end) const;

  // Copies on ctx's device (which must be this tensor's), ordered on its stream.
  Tensor clone(const Ctx& ctx) const;
  Tensor clone() const;  // host tensors only
  // A copy on ctx's device: host <-> device, device <-> device.
  Tensor to(const Ctx& ctx) const;
  Tensor to(DType dtype) const;  // host only: f32 <-> bf16 (round to nearest even)
  // Copies src's bytes in (same dtype and element count, any devices).
  void copy_from(const Tensor& src, const Ctx& ctx);
  void zero(const Ctx& ctx);
  void zero();  // host tensors only
  void fill(float v);  // host f32 only
  // The elements as a host vector (a synchronous copy for device tensors).
  template <class T>
  std::vector<T> to_vector() const;

 private:
  void check_dtype(DType want, const char* what) const;
  void copy_to_host(void* dst) const;  // nbytes(), synchronous
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  Device device_;
  std::shared_ptr<void> storage_;
  size_t offset_ = 0;  // bytes into storage_ (rows() views)
};

// Throws ShapeError "<what>: expected [a, b], got [c, d]" when shapes differ.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
// Throws ShapeError unless t has dtype `want`.
void check_dtype(const Tensor& t, DType want, const char* what);

template <class T>
T* Tensor::data() {
  check_dtype(dtype_of<T>(), "data()");
  return static_cast<T*>(raw());
}
template <class T>
const T* Tensor::data() const {
  check_dtype(dtype_of<T>(), "data()");
  return static_cast<const T*>(raw());
}

template <class T>
Tensor Tensor::from_host(const std::vector<T>& values, Shape shape) {
  if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
  Tensor t = empty(std::move(shape), dtype_of<T>(), host_ctx());
  SY_CHECK(t.numel() == static_cast<int64_t>(values.size()),
           "from_host: " << values.size() << " values for shape " << shape_str(t.shape()));
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  check_dtype(dtype_of<T>(), "to_vector()");
  std::vector<T> v(static_cast<size_t>(numel_));
  copy_to_host(v.data());
  return v;
}

}  // namespace sy
