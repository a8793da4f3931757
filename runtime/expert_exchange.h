// ExpertExchange: moves a rank's group-major MoE buffer (rows for all G
// experts, expert by expert) to the ranks of its expert-parallel group that
// own those experts, and back.
//
//   plan:    count[g] rows per expert -> all_to_all of the per-expert counts ->
//            plan_exchange (a pure host function: rows per peer, and the
//            permutation from received (source-major) to expert-major rows)
//   forward: all_to_all_v of rows (rank d receives the rows of experts
//            [d*El, (d+1)*El)) -> gather_rows into expert-major order, so each
//            local expert's rows are contiguous for its GEMMs
//   reverse: scatter_rows back to source-major -> all_to_all_v back -> the
//            original group-major layout
// The same plan serves the backward pass (gradients travel the same way).
// Rows move in the dtype they come in (bf16 mode: the dispatched rows and
// the gradients of the experts' outputs in bf16; outputs and dbuf in f32).
#pragma once
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace sy {

struct ExchangePlan {
  std::vector<int64_t> send_rows, recv_rows;  // per peer (W)
  std::vector<int64_t> perm;                  // expert-major row -> received (source-major) row
  std::vector<int32_t> offsets;               // (El + 1) local experts' rows in the expert-major buffer
  int64_t local_rows = 0;                     // rows this rank sends (its group-major buffer)
  int64_t received_rows() const { return offsets.empty() ? 0 : offsets.back(); }
};

// send[g]: rows this rank holds for expert g (G = W * El, experts of peer d
// are [d*El, (d+1)*El)); recv[s*El + e]: rows peer s holds for this rank's
// local expert e (the all-to-all of the counts). Received rows are
// source-major, expert-major within a source; the plan's perm takes, for each
// local expert, its rows from source 0, 1, ...
ExchangePlan plan_exchange(const std::vector<int64_t>& send, const std::vector<int64_t>& recv, int64_t W,
                           int64_t El);

class ExpertExchange {
 public:
  ExpertExchange(Ctx& ctx, comm::Communicator& ep, int64_t num_experts, int64_t width);
  // count: kept rows per expert (the route's host copy).
  void plan(const std::vector<int32_t>& count, const char* context);
  Tensor forward(const Tensor& local, const char* context);
  Tensor reverse(const Tensor& expert_major, const char* context);
  const ExchangePlan& current() const { return plan_; }
  // (El + 1) row offsets of the local experts in the expert-major buffer.
  const std::vector<int32_t>& expert_offsets() const { return plan_.offsets; }
  // Bytes this rank sent since the last reset_counters(). (The time is the
  // expert-parallel group's: Trainer::step reads it from the communicator.)
  double bytes_sent() const { return bytes_; }
  void reset_counters() { bytes_ = 0; }

 private:
  Ctx& ctx_;
  comm::Communicator& ep_;
  int64_t G_, El_, W_, width_;
  ExchangePlan plan_;
  Tensor perm_;  // plan_.perm on the context's device
  double bytes_ = 0;
};

}  // namespace sy
