// Communicator: the one interface for moving data between ranks.
//
// Every collective has a timeout: one that has not completed within it ends
// the job with one line naming the collective, the caller's context (the
// layer) and the group's ranks, so a lost or stuck rank never turns into a
// silent hang (MpiCommunicator: a watchdog thread, see there).
//
// Counts and displacements are in elements; all_to_all_v's displacements are
// the exclusive prefix sums of the counts (rows for rank r are contiguous and
// in rank order, as the group-major MoE buffer lays them out).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace sy::comm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Ranks of this group, as ranks of the world.
  virtual std::vector<int> world_ranks() const = 0;
  // Sub-groups: ranks with the same color form one, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) const = 0;

  // n values to every rank: send (size*n), recv (size*n).
  virtual void all_to_all(const int64_t* send, int64_t* recv, int64_t n, const char* context) = 0;
  virtual void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                            const std::vector<int64_t>& recv_counts, const char* context) = 0;
  virtual void all_reduce_sum(float* data, int64_t n, const char* context) = 0;
  virtual void all_reduce_sum(double* data, int64_t n, const char* context) = 0;
  virtual void broadcast(void* data, int64_t bytes, int root, const char* context) = 0;
  virtual void barrier(const char* context) = 0;

  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double s) { timeout_s_ = s; }
  // Seconds spent inside collectives since the last reset (for metrics).
  double comm_seconds() const { return comm_seconds_; }
  void reset_comm_seconds() { comm_seconds_ = 0; }

 protected:
  double timeout_s_ = 300;
  double comm_seconds_ = 0;
};

}  // namespace sy::comm
