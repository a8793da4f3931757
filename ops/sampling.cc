#include "ops/sampling.h"

#include "ops/backend.h"

namespace sy::ops {

int32_t sample_token(Ctx& ctx, const Tensor& probs, const SamplingParams& p, float u) {
  check_dtype(probs, DType::f32, "sample_token probs");
  SY_CHECK(probs.ndim() == 1 && probs.numel() > 0, "sample_token: probs must be (V), got " << shape_str(probs.shape()));
  SY_CHECK(p.temperature >= 0 && p.top_k >= 0, "sample_token: temperature " << p.temperature << ", top_k " << p.top_k);
  SY_CHECK(p.vocab >= 0 && p.vocab <= probs.numel(),
           "sample_token: vocab " << p.vocab << " for " << probs.numel() << " probabilities");
  SY_CHECK(u > 0 && u < 1, "sample_token: u = " << u << " is not in (0, 1)");
  check_device(ctx, "sample_token", {&probs});
  SY_DISPATCH_CPU_ONLY(ctx, sample_token, ctx, probs, p, u);
}

}  // namespace sy::ops
