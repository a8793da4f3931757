#include "runtime/token_dispatcher.h"

#include "ops/dispatch.h"

namespace sy {

TokenDispatcher::TokenDispatcher(Ctx& ctx, std::unique_ptr<ExpertExchange> exchange, const std::string& name,
                                 bool dedup)
    : ctx_(ctx), exchange_(std::move(exchange)), name_(name), dedup_(dedup && exchange_) {}

Tensor TokenDispatcher::dispatch(const Tensor& x, const ops::Route& r, DType dtype) {
  route_ = &r;
  N_ = x.dim(0), C_ = x.dim(1);
  if (exchange_) {
    if (!replay_) exchange_->reset_counters();  // (a repeated forward's bytes add to the step's)
    exchange_->plan(r.host_count(), name_.c_str());  // (the outputs return by it, deduplicated or not)
    if (dedup_) return exchange_->forward_tokens(x, r, dtype, name_.c_str());
  }
  // dispatch writes every row (a padded route's unused rows 0: they go
  // through the experts finite and add nothing to the weight gradients).
  Tensor buf = Tensor::empty({r.rows(), C_}, dtype, ctx_);
  ops::dispatch_forward(ctx_, buf, x, r);
  return exchange_ ? exchange_->forward(buf, name_.c_str()) : buf;
}

const std::vector<int32_t>& TokenDispatcher::expert_offsets() const {
  return exchange_ ? exchange_->expert_offsets() : route_->host_offset;
}

Tensor TokenDispatcher::combine(const Tensor& expert_out) {
  out_ = exchange_ ? exchange_->reverse(expert_out, name_.c_str()) : expert_out;
  Tensor y = Tensor::empty({N_, C_}, DType::f32, ctx_);
  ops::combine_forward(ctx_, y, out_, *route_);
  return y;
}

Tensor TokenDispatcher::combine_backward(const Tensor& dy, Tensor& dweight, DType dtype) {
  Tensor dout = Tensor::empty(out_.shape(), dtype, ctx_);  // every row written (unused ones 0)
  dweight = Tensor::empty({route_->assignments()}, DType::f32, ctx_);
  ops::combine_backward(ctx_, dout, dweight, dy, out_, *route_);
  // Gradients travel the forward's way: to the experts' owners, and back.
  return exchange_ ? exchange_->forward(dout, name_.c_str()) : dout;
}

Tensor TokenDispatcher::dispatch_backward(const Tensor& dbuf) {
  if (dedup_) return exchange_->reverse_tokens(dbuf, name_.c_str());
  Tensor d = exchange_ ? exchange_->reverse(dbuf, name_.c_str()) : dbuf;
  Tensor dx = Tensor::empty({N_, C_}, DType::f32, ctx_);
  ops::dispatch_backward(ctx_, dx, d, *route_, /*accumulate=*/false);
  return dx;
}

}  // namespace sy
