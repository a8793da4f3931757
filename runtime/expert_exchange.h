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
//
// Sending each token once per rank (parallel.dedup_dispatch; DeepEP's
// dispatch): where several of a token's kept experts live on one rank,
// the forward's rows of x and the backward's gradients of them cross once
// per (token, rank) instead of once per assignment:
//   forward:  x -> one row per (token, rank), rank-major, tokens in order
//             (dispatch along a route of tokens to ranks: plan_token_rows)
//             -> all_to_all_v, with each assignment's row index in its
//             message (int32, the counted rows' plan) -> the expert-major
//             buffer gathered from the token rows (plan_expert_rows)
//   backward: the expert-major gradient rows summed per token row (dispatch
//             backward along the destination's route of token rows to local
//             experts) -> all_to_all_v back -> summed per token over ranks
// The experts' outputs return as before (one row per assignment: each is
// weighted by its own combine weight on the token's rank).
// Rows move in the dtype they come in (bf16 mode: the dispatched rows and
// the gradients of the experts' outputs in bf16; outputs and dbuf in f32).
#pragma once
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"
#include "ops/routing.h"

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

// The source's side of a deduplicated dispatch, from the route's host copy:
// group[a] and buffer_row[a] (its row in the group-major buffer, -1 when not
// kept) for the N k assignments, experts [d El, (d+1) El) on rank d.
struct TokenRows {
  // A route of the tokens to the W ranks (k per token, the token's distinct
  // ranks in order of its first assignment there, -1 unused): slot = the
  // token's index among those sent to that rank, tokens ascending.
  std::vector<int32_t> group, slot;  // (N k)
  std::vector<int64_t> count;        // (W) token rows to each rank
  // Per row of the group-major buffer, the index of its token's row in the
  // message to the rank of its expert.
  std::vector<int32_t> row_in_message;  // (buffer rows)
};
TokenRows plan_token_rows(const std::vector<int32_t>& group, const std::vector<int64_t>& buffer_row, int64_t N,
                          int64_t k, int64_t W, int64_t El, int64_t buffer_rows);

// The destination's side: with the counted rows' plan, row_in_message as
// received (one a received assignment row, source-major) and the token rows
// received from each source (recv_tokens[s]):
struct ExpertRows {
  std::vector<int64_t> index;  // (received rows) expert-major row q reads token row index[q]
  // A route of the received token rows (items) to the El local experts, k
  // per item in expert order, slot = the row within its expert's block: its
  // dispatch backward sums each token row's gradient from the expert rows.
  std::vector<int32_t> group, slot;  // (token rows k), -1 unused
  int64_t token_rows = 0;
};
ExpertRows plan_expert_rows(const ExchangePlan& plan, const std::vector<int32_t>& row_in_message,
                            const std::vector<int64_t>& recv_tokens, int64_t k);

class ExpertExchange {
 public:
  ExpertExchange(Ctx& ctx, comm::Communicator& ep, int64_t num_experts, int64_t width);
  // count: kept rows per expert (the route's host copy).
  void plan(const std::vector<int32_t>& count, const char* context);
  Tensor forward(const Tensor& local, const char* context);
  Tensor reverse(const Tensor& expert_major, const char* context);
  // The deduplicated dispatch (after plan(), whose counted rows still serve
  // reverse() and the backward's forward()): x (N, C) f32 -> this rank's
  // expert-major rows in `dtype`, as forward(dispatch of x) gives them.
  Tensor forward_tokens(const Tensor& x, const ops::Route& r, DType dtype, const char* context);
  // Its backward: the expert-major rows' gradients (f32) -> dx (N, C), written.
  Tensor reverse_tokens(const Tensor& d_expert_major, const char* context);
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
  // forward_tokens' routes for reverse_tokens: the tokens to ranks, the
  // received token rows to the local experts; rows each way per peer.
  ops::Route to_ranks_, to_experts_;
  std::vector<int64_t> send_tokens_, recv_tokens_;
  int64_t N_ = 0;
  double bytes_ = 0;
};

}  // namespace sy
