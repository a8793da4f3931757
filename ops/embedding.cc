#include "ops/embedding.h"

#include "ops/backend.h"

namespace sy::ops {

namespace {
void check_tokens(const Tensor& tok, int64_t T, const Tensor& wpe, int64_t C) {
  check_dtype(tok, DType::i32, "embedding tokens");
  SY_CHECK(tok.ndim() == 1, "embedding tokens " << shape_str(tok.shape()) << " are not 1-d");
  const int64_t N = tok.dim(0);
  SY_CHECK(T > 0 && N % T == 0 && (!wpe.defined() || (T <= wpe.dim(0) && wpe.dim(1) == C)),
           "embedding: T=" << T << " N=" << N << " wpe " << shape_str(wpe.shape()));
}
}  // namespace

void embedding_forward(Ctx& ctx, const EmbeddingArgs& a) {
  const int64_t C = a.wte.dim(1);
  check_tokens(a.tokens, a.T, a.wpe, C);
  check_shape(a.out, {a.tokens.dim(0), C}, "embedding out");
  check_device(ctx, "embedding_forward", {&a.out, &a.tokens, &a.wte, &a.wpe});
  SY_DISPATCH(ctx, embedding_forward, ctx, a);
}

void embedding_backward(Ctx& ctx, const EmbeddingBackwardArgs& a) {
  const int64_t C = a.dwte.dim(1);
  check_tokens(a.tokens, a.T, a.dwpe, C);
  check_shape(a.dout, {a.tokens.dim(0), C}, "embedding dout");
  check_device(ctx, "embedding_backward", {&a.dwte, &a.dwpe, &a.dout, &a.tokens});
  SY_DISPATCH(ctx, embedding_backward, ctx, a);
}

}  // namespace sy::ops
