// ExpertExchange: moves a rank's group-major MoE buffer (rows for all G
// experts, expert by expert) to the ranks of its expert-parallel group that
// own those experts, and back.
//
//   plan:    count[g] rows per expert -> all_to_all of the per-expert counts
//   forward: all_to_all_v of rows (rank d receives the rows of experts
//            [d*El, (d+1)*El)) -> reorder source-major to expert-major, so each
//            local expert's rows are contiguous for its GEMMs
//   reverse: expert-major -> source-major -> all_to_all_v back -> the original
//            group-major layout
// The same plan serves the backward pass (gradients travel the same way).
#pragma once
#include <vector>

#include "comm/communicator.h"
#include "core/tensor.h"

namespace sy {

class ExpertExchange {
 public:
  ExpertExchange(comm::Communicator& ep, int64_t num_experts, int64_t width);
  void plan(const std::vector<int32_t>& count, const char* context);
  Tensor forward(const Tensor& local, const char* context);
  Tensor reverse(const Tensor& expert_major, const char* context);
  // (El + 1) row offsets of the local experts in the expert-major buffer.
  const std::vector<int32_t>& expert_offsets() const { return offsets_; }
  int64_t received_rows() const { return offsets_.back(); }
  // Bytes this rank sent in the last forward + reverse, and seconds spent.
  double bytes_sent() const { return bytes_; }
  double seconds() const { return seconds_; }
  void reset_counters() { bytes_ = 0, seconds_ = 0; }

 private:
  comm::Communicator& ep_;
  int64_t G_, El_, W_, width_;
  std::vector<int64_t> send_rows_, recv_rows_;  // per rank
  std::vector<int64_t> perm_;                   // expert-major row -> received row
  std::vector<int32_t> offsets_;
  int64_t local_rows_ = 0;
  double bytes_ = 0, seconds_ = 0;
};

}  // namespace sy
