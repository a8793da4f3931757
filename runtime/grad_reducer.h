// GradientReducer: averages gradients over data-parallel replicas, overlapped
// with backward.
//
//   dense:   over the world, in buckets of about bucket_bytes: ranges of the
//            dense gradient arena taken in reverse creation order (the order
//            backward finishes them), each ending at a parameter boundary.
//            Backward reports, block by block, from which arena offset on the
//            gradients are final (ready()); every bucket wholly past it is
//            handed to the reducer's thread, which all-reduces it in place on
//            its own communicator (ParallelContext::grads) while backward
//            goes on.
//   experts: over their shard's replicas, after backward (finish()).
// Both are then divided by the world size (each rank's loss is a mean over
// its own tokens). Without overlap (parallel.overlap_grad_reduce false, or a
// communicator that cannot run collectives from two threads) every bucket is
// reduced in finish(), as before.
//
// finish() reports the collective time and the part of it backward did not
// hide (the time finish() waited for the thread), so the hidden share is
// 1 - exposed / all_reduce. On a device the collectives are ordered on the
// compute stream (no overlap of kernels yet).
#pragma once
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/params.h"
#include "runtime/parallel.h"

namespace sy {

struct ReduceTimes {
  double all_reduce_s = 0;  // seconds in gradient collectives, this step
  double exposed_s = 0;     // seconds finish() waited for them
};

class GradientReducer {
 public:
  GradientReducer(Ctx& ctx, ParamStore& params, ParallelContext& par, int64_t bucket_bytes, bool overlap);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  void begin();                // a backward starts
  void ready(int64_t offset);  // dense gradients at arena offsets >= offset are final
  ReduceTimes finish();        // reduces the rest, waits, then the expert gradients
  bool overlapping() const { return overlap_; }
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  void reduce(std::pair<int64_t, int64_t> range, comm::Communicator& c, const char* what);
  void worker();

  Ctx& ctx_;
  ParamStore& params_;
  ParallelContext& par_;
  bool overlap_;
  float scale_;
  std::vector<std::pair<int64_t, int64_t>> buckets_;  // [begin, end), descending
  size_t launched_ = 0;  // buckets handed out this step
  // The thread's queue.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int64_t, int64_t>> queue_;
  int64_t in_flight_ = 0;
  double busy_s_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sy
