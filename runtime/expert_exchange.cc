#include "runtime/expert_exchange.h"

#include <algorithm>
#include <numeric>

#include "ops/dispatch.h"
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

TokenRows plan_token_rows(const std::vector<int32_t>& group, const std::vector<int64_t>& buffer_row, int64_t N,
                          int64_t k, int64_t W, int64_t El, int64_t buffer_rows) {
  SY_CHECK(static_cast<int64_t>(group.size()) == N * k && static_cast<int64_t>(buffer_row.size()) == N * k,
           "plan_token_rows: " << group.size() << " groups and " << buffer_row.size() << " rows for " << N
                               << " tokens x " << k);
  TokenRows t;
  t.group.assign(N * k, -1);
  t.slot.assign(N * k, -1);
  t.count.assign(W, 0);
  t.row_in_message.assign(buffer_rows, -1);
  for (int64_t i = 0; i < N; ++i) {
    int64_t used = 0;  // this token's distinct ranks so far
    for (int64_t j = 0; j < k; ++j) {
      const int64_t a = i * k + j, row = buffer_row[a];
      if (row < 0) continue;
      SY_CHECK(row < buffer_rows && group[a] >= 0 && group[a] < W * El,
               "plan_token_rows: assignment " << a << " to expert " << group[a] << " at row " << row);
      const int32_t d = group[a] / static_cast<int32_t>(El);
      int32_t at = -1;
      for (int64_t u = 0; u < used && at < 0; ++u)
        if (t.group[i * k + u] == d) at = t.slot[i * k + u];
      if (at < 0) {
        at = static_cast<int32_t>(t.count[d]++);
        t.group[i * k + used] = d;
        t.slot[i * k + used] = at;
        ++used;
      }
      t.row_in_message[row] = at;
    }
  }
  for (int64_t r = 0; r < buffer_rows; ++r)
    SY_CHECK(t.row_in_message[r] >= 0, "plan_token_rows: buffer row " << r << " belongs to no kept assignment");
  return t;
}

ExpertRows plan_expert_rows(const ExchangePlan& plan, const std::vector<int32_t>& row_in_message,
                            const std::vector<int64_t>& recv_tokens, int64_t k) {
  const int64_t W = static_cast<int64_t>(recv_tokens.size()), El = static_cast<int64_t>(plan.offsets.size()) - 1;
  const int64_t rows = plan.received_rows();
  SY_CHECK(static_cast<int64_t>(plan.recv_rows.size()) == W && static_cast<int64_t>(row_in_message.size()) == rows,
           "plan_expert_rows: " << row_in_message.size() << " row indices for " << rows << " received rows from "
                                << W << " ranks");
  std::vector<int64_t> src_start(W + 1, 0), tok_start(W + 1, 0);
  for (int64_t s = 0; s < W; ++s) {
    src_start[s + 1] = src_start[s] + plan.recv_rows[s];
    tok_start[s + 1] = tok_start[s] + recv_tokens[s];
  }
  ExpertRows e;
  e.token_rows = tok_start[W];
  e.index.assign(rows, -1);
  e.group.assign(e.token_rows * k, -1);
  e.slot.assign(e.token_rows * k, -1);
  std::vector<int64_t> used(e.token_rows, 0);
  for (int64_t x = 0; x < El; ++x)
    for (int64_t q = plan.offsets[x]; q < plan.offsets[x + 1]; ++q) {
      const int64_t p = plan.perm[q];  // its received (source-major) row
      const int64_t s = std::upper_bound(src_start.begin(), src_start.end(), p) - src_start.begin() - 1;
      const int64_t m = row_in_message[p];
      SY_CHECK(m >= 0 && m < recv_tokens[s], "plan_expert_rows: row " << p << " from rank " << s << " names token row "
                                                                      << m << " of " << recv_tokens[s]);
      const int64_t u = tok_start[s] + m;
      SY_CHECK(used[u] < k, "plan_expert_rows: token row " << u << " feeds more than " << k << " experts");
      e.index[q] = u;
      e.group[u * k + used[u]] = static_cast<int32_t>(x);
      e.slot[u * k + used[u]] = static_cast<int32_t>(q - plan.offsets[x]);
      ++used[u];
    }
  for (int64_t u = 0; u < e.token_rows; ++u)
    SY_CHECK(used[u] > 0, "plan_expert_rows: token row " << u << " feeds no expert");
  return e;
}

namespace {
// A route over host-planned groups and slots, on ctx's device: groups'
// rows are `count`, laid out group after group. Its group, slot, count and
// offset go up as one i32 array (one copy), views of it.
ops::Route host_route(Ctx& ctx, int64_t items, int64_t k, const std::vector<int32_t>& group,
                      const std::vector<int32_t>& slot, const std::vector<int64_t>& count) {
  ops::Route r;
  r.num_items = items;
  r.k = k;
  const int64_t n = items * k, G = static_cast<int64_t>(count.size());
  r.num_groups = G;
  r.host_offset.assign(G + 1, 0);
  for (int64_t g = 0; g < G; ++g) r.host_offset[g + 1] = r.host_offset[g] + static_cast<int32_t>(count[g]);
  r.capacity = G == 0 ? 0 : *std::max_element(count.begin(), count.end());
  r.assigned = std::count_if(group.begin(), group.end(), [](int32_t g) { return g >= 0; });
  std::vector<int32_t> packed(group);
  packed.insert(packed.end(), slot.begin(), slot.end());
  packed.insert(packed.end(), count.begin(), count.end());
  packed.insert(packed.end(), r.host_offset.begin(), r.host_offset.end());
  const Tensor up = Tensor::from_host(packed).to(ctx);
  r.group = up.rows(0, n);
  r.slot = up.rows(n, 2 * n);
  r.count = up.rows(2 * n, 2 * n + G);
  r.offset = up.rows(2 * n + G, 2 * n + 2 * G + 1);
  r.weight = Tensor::zeros({n}, DType::f32, ctx);  // (dispatch reads no weight)
  return r;
}
}  // namespace

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

Tensor ExpertExchange::forward_tokens(const Tensor& x, const ops::Route& r, DType dtype, const char* context) {
  const int64_t C = x.dim(1);
  check_shape(x, {r.num_items, width_}, "expert exchange tokens");
  N_ = r.num_items;
  // The plan, on the host. On a GPU the route's group and slot come back
  // and the two plans' routes and the gather's index go up (waits).
  const ops::Route h = r.on_host(ctx_);  // (a wait for ctx_'s stream, not the reducer's)
  std::vector<int32_t> group = h.group.to_vector<int32_t>();
  std::vector<int64_t> row(r.assignments());
  for (int64_t a = 0; a < r.assignments(); ++a) row[a] = h.row(a);
  const TokenRows t = plan_token_rows(group, row, N_, r.k, W_, El_, plan_.local_rows);
  send_tokens_ = t.count;
  ep_.all_to_all_counts(send_tokens_, recv_tokens_, context);
  to_ranks_ = host_route(ctx_, N_, r.k, t.group, t.slot, t.count);

  // Each token's row once per rank, and each assignment's row index in its message.
  Tensor send = Tensor::empty({to_ranks_.rows(), C}, dtype, ctx_);
  ops::dispatch_forward(ctx_, send, x, to_ranks_);
  const int64_t received = std::accumulate(recv_tokens_.begin(), recv_tokens_.end(), int64_t{0});
  Tensor tokens = Tensor::empty({received, C}, dtype, ctx_);
  ep_.all_to_all_v(send, send_tokens_, tokens, recv_tokens_, ctx_.stream, context);
  // (host tensors: the destination plans on the host; a device
  // communicator stages them itself)
  const Tensor idx_send = Tensor::from_host(t.row_in_message, {plan_.local_rows, 1});
  Tensor idx = Tensor::empty({plan_.received_rows(), 1}, DType::i32, host_ctx());
  ep_.all_to_all_v(idx_send, plan_.send_rows, idx, plan_.recv_rows, ctx_.stream, context);
  bytes_ += static_cast<double>(send.nbytes() + idx_send.nbytes());

  // The expert-major rows, gathered from the token rows.
  const ExpertRows e = plan_expert_rows(plan_, idx.to_vector<int32_t>(), recv_tokens_, r.k);
  std::vector<int64_t> per_expert(El_);
  for (int64_t x2 = 0; x2 < El_; ++x2) per_expert[x2] = plan_.offsets[x2 + 1] - plan_.offsets[x2];
  to_experts_ = host_route(ctx_, e.token_rows, r.k, e.group, e.slot, per_expert);
  Tensor em = Tensor::empty({plan_.received_rows(), C}, dtype, ctx_);
  ops::gather_rows(ctx_, em, tokens, Tensor::from_host(e.index).to(ctx_));
  return em;
}

Tensor ExpertExchange::reverse_tokens(const Tensor& d_expert_major, const char* context) {
  check_shape(d_expert_major, {plan_.received_rows(), width_}, "expert exchange token gradients");
  Tensor d_tokens = Tensor::empty({to_experts_.num_items, width_}, DType::f32, ctx_);
  ops::dispatch_backward(ctx_, d_tokens, d_expert_major, to_experts_, /*accumulate=*/false);
  Tensor d_send = Tensor::empty({to_ranks_.rows(), width_}, DType::f32, ctx_);
  ep_.all_to_all_v(d_tokens, recv_tokens_, d_send, send_tokens_, ctx_.stream, context);
  bytes_ += static_cast<double>(d_tokens.nbytes());
  Tensor dx = Tensor::empty({N_, width_}, DType::f32, ctx_);
  ops::dispatch_backward(ctx_, dx, d_send, to_ranks_, /*accumulate=*/false);
  return dx;
}

}  // namespace sy
