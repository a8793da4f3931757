#include "runtime/expert_exchange.h"

#include <algorithm>
#include <numeric>

namespace sy {

ExpertExchange::ExpertExchange(comm::Communicator& ep, int64_t num_experts, int64_t width)
    : ep_(ep), G_(num_experts), El_(num_experts / ep.size()), W_(ep.size()), width_(width) {
  SY_CHECK(num_experts % ep.size() == 0, num_experts << " experts over " << ep.size() << " ranks");
}

void ExpertExchange::plan(const std::vector<int32_t>& count, const char* context) {
  SY_CHECK(static_cast<int64_t>(count.size()) == G_, "expert exchange: " << count.size() << " counts for " << G_ << " experts");
  std::vector<int64_t> send(G_), recv(G_);  // W blocks of El counts
  for (int64_t g = 0; g < G_; ++g) send[g] = count[g];
  const double before = ep_.comm_seconds();
  ep_.all_to_all(send.data(), recv.data(), El_, context);
  seconds_ += ep_.comm_seconds() - before;
  send_rows_.assign(W_, 0);
  recv_rows_.assign(W_, 0);
  for (int64_t d = 0; d < W_; ++d)
    for (int64_t e = 0; e < El_; ++e) {
      send_rows_[d] += send[d * El_ + e];
      recv_rows_[d] += recv[d * El_ + e];
    }
  local_rows_ = std::accumulate(send_rows_.begin(), send_rows_.end(), int64_t{0});
  // Received rows are source-major, expert-major within a source; the
  // expert-major order takes, for each local expert, its rows from source 0, 1, ...
  std::vector<int64_t> src_start(W_ + 1, 0);
  for (int64_t s = 0; s < W_; ++s) src_start[s + 1] = src_start[s] + recv_rows_[s];
  perm_.clear();
  offsets_.assign(El_ + 1, 0);
  for (int64_t e = 0; e < El_; ++e) {
    for (int64_t s = 0; s < W_; ++s) {
      int64_t row = src_start[s];
      for (int64_t e2 = 0; e2 < e; ++e2) row += recv[s * El_ + e2];
      for (int64_t i = 0; i < recv[s * El_ + e]; ++i) perm_.push_back(row + i);
    }
    offsets_[e + 1] = static_cast<int32_t>(perm_.size());
  }
}

Tensor ExpertExchange::forward(const Tensor& local, const char* context) {
  check_shape(local, {local_rows_, width_}, "expert exchange send buffer");
  std::vector<int64_t> sc(W_), rc(W_);
  for (int64_t r = 0; r < W_; ++r) sc[r] = send_rows_[r] * width_, rc[r] = recv_rows_[r] * width_;
  Tensor received({received_rows(), width_});
  const double before = ep_.comm_seconds();
  ep_.all_to_all_v(local.f32(), sc, received.f32(), rc, context);
  seconds_ += ep_.comm_seconds() - before;
  bytes_ += static_cast<double>(local.nbytes());
  Tensor em({received_rows(), width_});
  for (size_t i = 0; i < perm_.size(); ++i)
    std::copy_n(received.f32() + perm_[i] * width_, width_, em.f32() + i * width_);
  return em;
}

Tensor ExpertExchange::reverse(const Tensor& expert_major, const char* context) {
  check_shape(expert_major, {received_rows(), width_}, "expert exchange return buffer");
  Tensor received({received_rows(), width_});
  for (size_t i = 0; i < perm_.size(); ++i)
    std::copy_n(expert_major.f32() + i * width_, width_, received.f32() + perm_[i] * width_);
  std::vector<int64_t> sc(W_), rc(W_);
  for (int64_t r = 0; r < W_; ++r) sc[r] = recv_rows_[r] * width_, rc[r] = send_rows_[r] * width_;
  Tensor local({local_rows_, width_});
  const double before = ep_.comm_seconds();
  ep_.all_to_all_v(received.f32(), sc, local.f32(), rc, context);
  seconds_ += ep_.comm_seconds() - before;
  bytes_ += static_cast<double>(received.nbytes());
  return local;
}

}  // namespace sy
