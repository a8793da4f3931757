#include "runtime/expert_exchange.h"

#include <numeric>

#include "ops/permute.h"

namespace sy {

ExchangePlan plan_exchange(const std::vector<int64_t>& send, const std::vector<int64_t>& recv, int64_t W,
                           int64_t El) {
  SY_CHECK(static_cast<int64_t>(send.size()) == W * El && static_cast<int64_t>(recv.size()) == W * El,
           "plan_exchange: " << send.size() << " send and " << recv.size() << " recv counts for " << W << " x " << El);
  ExchangePlan p;
  p.send_rows.assign(W, 0);
  p.recv_rows.assign(W, 0);
  for (int64_t d = 0; d < W; ++d)
    for (int64_t e = 0; e < El; ++e) {
      p.send_rows[d] += send[d * El + e];
      p.recv_rows[d] += recv[d * El + e];
    }
  p.local_rows = std::accumulate(p.send_rows.begin(), p.send_rows.end(), int64_t{0});
  std::vector<int64_t> src_start(W + 1, 0);
  for (int64_t s = 0; s < W; ++s) src_start[s + 1] = src_start[s] + p.recv_rows[s];
  p.offsets.assign(El + 1, 0);
  for (int64_t e = 0; e < El; ++e) {
    for (int64_t s = 0; s < W; ++s) {
      int64_t row = src_start[s];
      for (int64_t e2 = 0; e2 < e; ++e2) row += recv[s * El + e2];
      for (int64_t i = 0; i < recv[s * El + e]; ++i) p.perm.push_back(row + i);
    }
    p.offsets[e + 1] = static_cast<int32_t>(p.perm.size());
  }
  return p;
}

ExpertExchange::ExpertExchange(Ctx& ctx, comm::Communicator& ep, int64_t num_experts, int64_t width)
    : ctx_(ctx), ep_(ep), G_(num_experts), El_(num_experts / ep.size()), W_(ep.size()), width_(width) {
  SY_CHECK(num_experts % ep.size() == 0, num_experts << " experts over " << ep.size() << " ranks");
}

void ExpertExchange::plan(const std::vector<int32_t>& count, const char* context) {
  SY_CHECK(static_cast<int64_t>(count.size()) == G_, "expert exchange: " << count.size() << " counts for " << G_ << " experts");
  std::vector<int64_t> send(count.begin(), count.end()), recv;
  ep_.all_to_all_counts(send, recv, context);
  plan_ = plan_exchange(send, recv, W_, El_);
  perm_ = Tensor::from_host(plan_.perm).to(ctx_);
}

Tensor ExpertExchange::forward(const Tensor& local, const char* context) {
  check_shape(local, {plan_.local_rows, width_}, "expert exchange send buffer");
  Tensor received = Tensor::empty({plan_.received_rows(), width_}, local.dtype(), ctx_);
  ep_.all_to_all_v(local, plan_.send_rows, received, plan_.recv_rows, ctx_.stream, context);
  bytes_ += static_cast<double>(local.nbytes());
  Tensor em = Tensor::empty(received.shape(), local.dtype(), ctx_);
  ops::gather_rows(ctx_, em, received, perm_);
  return em;
}

Tensor ExpertExchange::reverse(const Tensor& expert_major, const char* context) {
  check_shape(expert_major, {plan_.received_rows(), width_}, "expert exchange return buffer");
  Tensor received = Tensor::empty(expert_major.shape(), expert_major.dtype(), ctx_);
  ops::scatter_rows(ctx_, received, expert_major, perm_);
  Tensor local = Tensor::empty({plan_.local_rows, width_}, expert_major.dtype(), ctx_);
  ep_.all_to_all_v(received, plan_.recv_rows, local, plan_.send_rows, ctx_.stream, context);
  bytes_ += static_cast<double>(received.nbytes());
  return local;
}

}  // namespace sy
