#include "ops/embedding.h"

namespace sy::ops::cpu {

void embedding_forward(Ctx&, const EmbeddingArgs& a) {
  const int64_t N = a.tokens.dim(0), V = a.wte.dim(0), C = a.wte.dim(1);
  const int32_t* tok = a.tokens.data<int32_t>();
  float* o = a.out.f32();
  const float* e = a.wte.f32();
  const float* p = a.wpe.defined() ? a.wpe.f32() : nullptr;
  for (int64_t n = 0; n < N; ++n) {
    SY_CHECK(tok[n] >= 0 && tok[n] < V, "token " << tok[n] << " outside vocabulary [0, " << V << ")");
    const float* er = e + tok[n] * C;
    if (!p) {
      for (int64_t c = 0; c < C; ++c) o[n * C + c] = er[c];
      continue;
    }
    const float* pr = p + (n % a.T) * C;
    for (int64_t c = 0; c < C; ++c) o[n * C + c] = er[c] + pr[c];
  }
}

void embedding_backward(Ctx&, const EmbeddingBackwardArgs& a) {
  const int64_t N = a.tokens.dim(0), C = a.dwte.dim(1);
  const int32_t* tok = a.tokens.data<int32_t>();
  float* de = a.dwte.f32();
  float* dp = a.dwpe.defined() ? a.dwpe.f32() : nullptr;
  const float* d = a.dout.f32();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      de[tok[n] * C + c] += d[n * C + c];
      if (dp) dp[(n % a.T) * C + c] += d[n * C + c];
    }
}

}  // namespace sy::ops::cpu
