#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/cuda_check.h"

namespace sy {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

Tensor Tensor::empty(Shape shape, DType dtype, const Ctx& ctx) {
  SY_CHECK(ctx.alloc, "Tensor::empty: context for " << ctx.device.str() << " has no allocator");
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = ctx.device;
  t.numel_ = 1;
  for (int64_t d : t.shape_) {
    if (d < 0) throw ShapeError("negative dimension in shape " + shape_str(t.shape_));
    t.numel_ *= d;
  }
  const size_t bytes = std::max<size_t>(t.nbytes(), 1);
  Allocator* alloc = ctx.alloc;
  const Stream stream = ctx.stream;
  void* p = alloc->allocate(bytes, stream);
  t.storage_ = std::shared_ptr<void>(p, [alloc, bytes, stream](void* q) { alloc->deallocate(q, bytes, stream); });
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, const Ctx& ctx) {
  Tensor t = empty(std::move(shape), dtype, ctx);
  t.zero(ctx);
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  if (j < 0 || j >= n)
    throw ShapeError("dim " + std::to_string(i) + " out of range for shape " + shape_str(shape_));
  return shape_[j];
}

void Tensor::check_dtype(DType want, const char* what) const {
  if (dtype_ != want)
    throw ShapeError(std::string(what) + ": a " + dtype_name(dtype_) + " tensor read as " + dtype_name(want));
}

float* Tensor::f32() {
  if (dtype_ != DType::f32 || !device_.is_cpu())
    throw ShapeError(std::string("f32() on a ") + dtype_name(dtype_) + " " + device_.str() +
                     " tensor; host f32 access needs an f32 cpu tensor");
  return static_cast<float*>(raw());
}
const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }

Tensor Tensor::reshape(Shape shape) const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != numel_)
    throw ShapeError("reshape: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  SY_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
           "rows(" << begin << ", " << end << ") of a tensor of shape " << shape_str(shape_));
  const int64_t row = shape_[0] > 0 ? numel_ / shape_[0] : 0;
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.numel_ = (end - begin) * row;
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

namespace {

#ifdef SY_WITH_CUDA
cudaMemcpyKind copy_kind(Device dst, Device src) {
  if (dst.is_cpu()) return src.is_cpu() ? cudaMemcpyHostToHost : cudaMemcpyDeviceToHost;
  return src.is_cpu() ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToDevice;
}
#endif

// Copies `bytes` between host and device memory; device copies are ordered
// on `stream`, and a copy to or from host memory (pageable or page-locked) is
// waited for before this returns: the caller reads or reuses that memory next.
void copy_bytes(void* dst, Device dd, const void* src, Device sd, size_t bytes, Stream stream) {
  if (bytes == 0) return;
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef SY_WITH_CUDA
  auto s = static_cast<cudaStream_t>(stream.handle);
  // A copy on no stream (the host context, to_vector): the device side's last
  // writer may be on any stream, and a DeviceRuntime's stream is non-blocking
  // (the legacy default stream does not wait for it), so wait for the device.
  if (!s) CUDA_CHECK(cudaDeviceSynchronize());
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, copy_kind(dd, sd), s));
  // (On no stream a device-to-device copy waits too: later work on a
  // non-blocking stream would not wait for the legacy stream.)
  if (!s || dd.is_cpu() || sd.is_cpu()) CUDA_CHECK(cudaStreamSynchronize(s));
  if (!s || dd.is_cpu() || sd.is_cpu()) count_host_wait();  // the host waited above
#else
  (void)stream;
  throw BackendError("this build of Switchyard has no CUDA backend (configure with SWITCHYARD_CUDA=ON)");
#endif
}

}  // namespace

void Tensor::copy_to_host(void* dst) const { copy_bytes(dst, Device::cpu(), raw(), device_, nbytes(), Stream{}); }

void Tensor::copy_from(const Tensor& src, const Ctx& ctx) {
  SY_CHECK(src.dtype_ == dtype_ && src.numel_ == numel_,
           "copy_from: " << dtype_name(src.dtype_) << " " << shape_str(src.shape_) << " into "
                         << dtype_name(dtype_) << " " << shape_str(shape_));
  copy_bytes(raw(), device_, src.raw(), src.device_, nbytes(), ctx.stream);
}

Tensor Tensor::clone(const Ctx& ctx) const {
  SY_CHECK(ctx.device == device_, "clone of a " << device_.str() << " tensor on " << ctx.device.str());
  Tensor t = empty(shape_, dtype_, ctx);
  t.copy_from(*this, ctx);
  return t;
}

Tensor Tensor::clone() const {
  SY_CHECK(device_.is_cpu(), "clone() without a context is for host tensors; this one is on " << device_.str());
  return clone(host_ctx());
}

Tensor Tensor::to(const Ctx& ctx) const {
  Tensor t = empty(shape_, dtype_, ctx);
  t.copy_from(*this, ctx);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (!device_.is_cpu()) throw ShapeError("dtype conversion is implemented on the CPU only");
  if (dtype == dtype_) return clone();
  SY_CHECK((dtype_ == DType::f32 && dtype == DType::bf16) || (dtype_ == DType::bf16 && dtype == DType::f32),
           "to(" << dtype_name(dtype) << ") from " << dtype_name(dtype_) << ": only f32 <-> bf16");
  Tensor t = empty(shape_, dtype, host_ctx());
  if (dtype == DType::bf16) {
    const float* src = f32();
    bf16_t* dst = t.data<bf16_t>();
    for (int64_t i = 0; i < numel_; ++i) dst[i].bits = f32_to_bf16(src[i]);
  } else {
    const bf16_t* src = data<bf16_t>();
    float* dst = t.f32();
    for (int64_t i = 0; i < numel_; ++i) dst[i] = bf16_to_f32(src[i].bits);
  }
  return t;
}

void Tensor::zero(const Ctx& ctx) {
  SY_CHECK(ctx.device == device_, "zero of a " << device_.str() << " tensor on " << ctx.device.str());
  if (device_.is_cpu()) {
    std::memset(raw(), 0, nbytes());
    return;
  }
#ifdef SY_WITH_CUDA
  CUDA_CHECK(cudaMemsetAsync(raw(), 0, nbytes(), static_cast<cudaStream_t>(ctx.stream.handle)));
#endif
}

void Tensor::zero() {
  SY_CHECK(device_.is_cpu(), "zero() without a context is for host tensors; this one is on " << device_.str());
  zero(host_ctx());
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

void check_dtype(const Tensor& t, DType want, const char* what) {
  if (t.dtype() != want)
    throw ShapeError(std::string(what) + ": expected " + dtype_name(want) + ", got " + dtype_name(t.dtype()));
}

}  // namespace sy
