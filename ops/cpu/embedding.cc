#include "ops/embedding.h"

namespace sy::ops {

void embedding_forward(Tensor& out, const Tokens& tok, int64_t T, const Tensor& wte,
                       const Tensor& wpe) {
  const int64_t N = static_cast<int64_t>(tok.size()), V = wte.dim(0), C = wte.dim(1);
  check_shape(out, {N, C}, "embedding out");
  SY_CHECK(T > 0 && N % T == 0 && T <= wpe.dim(0) && wpe.dim(1) == C,
           "embedding: T=" << T << " N=" << N << " wpe " << shape_str(wpe.shape()));
  float* o = out.f32();
  const float* e = wte.f32();
  const float* p = wpe.f32();
  for (int64_t n = 0; n < N; ++n) {
    SY_CHECK(tok[n] >= 0 && tok[n] < V, "token " << tok[n] << " outside vocabulary [0, " << V << ")");
    const float* er = e + tok[n] * C;
    const float* pr = p + (n % T) * C;
    for (int64_t c = 0; c < C; ++c) o[n * C + c] = er[c] + pr[c];
  }
}

void embedding_backward(Tensor& dwte, Tensor& dwpe, const Tensor& dout, const Tokens& tok,
                        int64_t T) {
  const int64_t N = static_cast<int64_t>(tok.size()), C = dwte.dim(1);
  check_shape(dout, {N, C}, "embedding dout");
  float* de = dwte.f32();
  float* dp = dwpe.f32();
  const float* d = dout.f32();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      de[tok[n] * C + c] += d[n * C + c];
      dp[(n % T) * C + c] += d[n * C + c];
    }
}

}  // namespace sy::ops
