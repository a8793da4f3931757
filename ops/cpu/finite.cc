#include "ops/finite.h"

#include <cmath>

namespace sy::ops::cpu {

int64_t count_nonfinite(Ctx&, const Tensor& x) {
  const float* p = x.f32();
  int64_t n = 0;
  for (int64_t i = 0; i < x.numel(); ++i) n += !std::isfinite(p[i]);
  return n;
}

}  // namespace sy::ops::cpu
