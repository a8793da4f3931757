#include "ops/permute.h"

#include <cstring>

namespace sy::ops::cpu {

void gather_rows(Ctx&, Tensor& out, const Tensor& in, const Tensor& index) {
  const size_t row = out.dim(0) > 0 ? out.nbytes() / out.dim(0) : 0;
  const int64_t* idx = index.data<int64_t>();
  const char* src = static_cast<const char*>(in.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t i = 0; i < out.dim(0); ++i) {
    SY_CHECK(idx[i] >= 0 && idx[i] < in.dim(0), "gather_rows: index " << idx[i] << " outside [0, " << in.dim(0) << ")");
    std::memcpy(dst + i * row, src + idx[i] * row, row);
  }
}

void scatter_rows(Ctx&, Tensor& out, const Tensor& in, const Tensor& index) {
  const size_t row = in.dim(0) > 0 ? in.nbytes() / in.dim(0) : 0;
  const int64_t* idx = index.data<int64_t>();
  const char* src = static_cast<const char*>(in.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t i = 0; i < in.dim(0); ++i) {
    SY_CHECK(idx[i] >= 0 && idx[i] < in.dim(0), "scatter_rows: index " << idx[i] << " outside [0, " << in.dim(0) << ")");
    std::memcpy(dst + idx[i] * row, src + i * row, row);
  }
}

}  // namespace sy::ops::cpu
