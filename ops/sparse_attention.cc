#include "ops/sparse_attention.h"

#include <initializer_list>

#include "ops/backend.h"

namespace sy::ops {

void KeySetsBuilder::add_query(const std::vector<int32_t>& keys) {
  idx_.insert(idx_.end(), keys.begin(), keys.end());
  off_.push_back(static_cast<int64_t>(idx_.size()));
}

KeySets KeySetsBuilder::build(Ctx& ctx) const {
  KeySets ks;
  ks.off = Tensor::from_host(off_).to(ctx);
  ks.idx = Tensor::from_host(idx_).to(ctx);
  return ks;
}

namespace {
// q, k, v and the outputs all f32, or all bf16 (CUDA: block top-k's packed
// path at head dims 64 and 128; the CPU emulates it on any); lse f32.
void check_dtypes(const char* op, std::initializer_list<const Tensor*> ts, const Tensor& lse) {
  const DType dt = (*ts.begin())->dtype();
  for (const Tensor* t : ts)
    SY_CHECK(t->dtype() == dt && (dt == DType::f32 || dt == DType::bf16),
             op << ": q, k, v and the outputs must be all f32 or all bf16, got " << dtype_name(t->dtype())
                << " beside " << dtype_name(dt));
  check_dtype(lse, DType::f32, "sparse attention lse");
}

void check_head(Ctx& ctx, const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const KeySets& ks) {
  SY_CHECK(q.ndim() == 2, op << ": q " << shape_str(q.shape()) << " is not (T, D)");
  check_shape(k, q.shape(), "sparse attention k");
  check_shape(v, q.shape(), "sparse attention v");
  SY_CHECK(ks.queries() == q.dim(0), op << ": key sets for " << ks.queries() << " queries, head has " << q.dim(0));
  check_dtype(ks.off, DType::i64, "key set offsets");
  check_dtype(ks.idx, DType::i32, "key set indices");
  check_device(ctx, op, {&q, &k, &v, &ks.off, &ks.idx});
}
}  // namespace

void sparse_attention_forward(Ctx& ctx, const SparseAttentionArgs& a) {
  check_head(ctx, "sparse_attention_forward", a.q, a.k, a.v, a.keys);
  check_shape(a.o, a.q.shape(), "sparse attention o");
  check_shape(a.lse, {a.q.dim(0)}, "sparse attention lse");
  check_device(ctx, "sparse_attention_forward", {&a.o, &a.lse});
  check_dtypes("sparse_attention_forward", {&a.q, &a.k, &a.v, &a.o}, a.lse);
  SY_DISPATCH(ctx, sparse_attention_forward, ctx, a);
}

void sparse_attention_backward(Ctx& ctx, const SparseAttentionBackwardArgs& a) {
  check_head(ctx, "sparse_attention_backward", a.q, a.k, a.v, a.keys);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&a.dq, &a.dk, &a.dv, &a.dout, &a.o}) check_shape(*t, a.q.shape(), "sparse attention gradient");
  check_shape(a.lse, {a.q.dim(0)}, "sparse attention lse");
  check_device(ctx, "sparse_attention_backward", {&a.dq, &a.dk, &a.dv, &a.dout, &a.o, &a.lse});
  check_dtypes("sparse_attention_backward", {&a.q, &a.k, &a.v, &a.o, &a.dout, &a.dq, &a.dk, &a.dv}, a.lse);
  SY_DISPATCH(ctx, sparse_attention_backward, ctx, a);
}

KeySets local_keysets(Ctx& ctx, int64_t T, int64_t window) {
  SY_CHECK(window >= 1, "local attention window " << window);
  SY_DISPATCH(ctx, local_keysets, ctx, T, window);
}

KeySets block_topk_keysets(Ctx& ctx, const Tensor& q, const Tensor& k, int64_t block, int64_t topk) {
  SY_CHECK(block >= 1 && topk >= 0, "block top-k: block " << block << ", k " << topk);
  SY_CHECK(q.ndim() == 2, "block top-k: q " << shape_str(q.shape()) << " is not (T, D)");
  check_shape(k, q.shape(), "block top-k k");
  SY_CHECK((q.dtype() == DType::f32 || q.dtype() == DType::bf16) && k.dtype() == q.dtype(),
           "block top-k: q and k must be both f32 or both bf16, got " << dtype_name(q.dtype()) << " and "
                                                                      << dtype_name(k.dtype()));
  check_device(ctx, "block_topk_keysets", {&q, &k});
  SY_DISPATCH(ctx, block_topk_keysets, ctx, q, k, block, topk);
}

}  // namespace sy::ops
