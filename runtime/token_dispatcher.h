// TokenDispatcher: moves token rows along a Route to the experts that
// process them and back (ops/dispatch.h), across the expert-parallel group
// when there is one (runtime/expert_exchange.h).
//
//   dispatch: x (N, C) -> group-major buffer (route.rows(), C) -> [exchange]
//             -> expert-major rows of this rank's experts (expert_offsets())
//   combine:  expert outputs -> [exchange back] -> y_i = sum_j w_ij out_ij
// Backward runs the same path in reverse; the combine weights' gradient goes
// to the router (runtime/router.h).
#pragma once
#include <memory>

#include "ops/routing.h"
#include "runtime/expert_exchange.h"

namespace sy {

class TokenDispatcher {
 public:
  // exchange: the expert-parallel exchange, or null on one rank; dedup:
  // dispatch each token once per rank (ExpertExchange::forward_tokens).
  TokenDispatcher(Ctx& ctx, std::unique_ptr<ExpertExchange> exchange, const std::string& name, bool dedup = false);
  // Rows of x for this rank's experts, expert-major; `dtype` bf16 rounds
  // them as they are moved (the experts' bf16 GEMM operand: one pass, and
  // half the bytes through the exchange).
  Tensor dispatch(const Tensor& x, const ops::Route& r, DType dtype = DType::f32);
  // (local experts + 1) row offsets into dispatch()'s buffer.
  const std::vector<int32_t>& expert_offsets() const;
  Tensor combine(const Tensor& expert_out);
  // Returns d(expert_out), in `dtype` (bf16: the experts' backward operand,
  // rounded as it is written, and half the bytes through the exchange);
  // fills dweight (N*k).
  Tensor combine_backward(const Tensor& dy, Tensor& dweight, DType dtype = DType::f32);
  // Returns dx (N, C) from d(dispatch()'s buffer).
  Tensor dispatch_backward(const Tensor& dbuf);
  // Drops the expert outputs combine's backward reads (runtime/layers.h).
  void release() { out_ = Tensor(); }
  // The next dispatches repeat a forward (activation recomputation): their
  // bytes count on top of the first's, not instead.
  void set_replay(bool r) { replay_ = r; }
  // All-to-all bytes sent in the last forward + backward.
  double bytes_sent() const { return exchange_ ? exchange_->bytes_sent() : 0; }

 private:
  Ctx& ctx_;
  std::unique_ptr<ExpertExchange> exchange_;
  std::string name_;
  bool dedup_ = false;
  bool replay_ = false;
  const ops::Route* route_ = nullptr;
  int64_t N_ = 0, C_ = 0;
  Tensor out_;  // group-major expert outputs, saved for combine's backward
};

}  // namespace sy
