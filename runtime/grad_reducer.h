// GradientReducer: averages gradients over data-parallel replicas, overlapped
// with backward.
//
//   dense:   over the world, in buckets of about bucket_bytes: ranges of the
//            dense gradient arena taken in reverse creation order (the order
//            backward finishes them), each ending at a parameter boundary.
//            Backward reports, block by block, from which arena offset on the
//            gradients are final (ready()); every bucket wholly past it is
//            all-reduced (or, scatter: reduce-scattered over the moments'
//            parts, parallel.reduce_scatter_grads) in place on its own communicator
//            (ParallelContext::grads) while backward goes on:
//              thread mode (MPI, blocking collectives): by the reducer's
//                thread, while the main thread runs backward; on a GPU the
//                thread waits for an event ready() recorded on the compute
//                stream (that bucket's gradients, not the whole device's
//                work: backward's later kernels go on) and stages the bucket
//                through the host on a second stream, where its scale runs
//                too, waited for by the thread (so nothing is pending there
//                once finish() has seen every bucket done);
//              stream mode (NCCL on a GPU, stream-ordered collectives): by
//                the main thread, queued on a second stream after the
//                compute stream's work so far, so the collective's kernels
//                run beside backward's; the compute stream waits for the
//                last bucket in finish(). No thread: NCCL calls must come
//                in one order on every rank (the expert all-to-alls go on
//                interleaved with the buckets in program order, the same on
//                every rank), which a thread's timing would not keep;
//                that order is what NCCL_LAUNCH_ORDER_IMPLICIT (set by
//                make_nccl_communicator) follows, so a bucket's all-reduce
//                and an all-to-all in flight at once cannot deadlock.
//   experts: over their shard's replicas, after backward (finish()).
// Both are then divided by the world size, as a product with the float
// 1 / N (each rank's loss is a mean over its own tokens; scatter: only the rank's own part, the rest left as the
// collective left it). Without overlap (parallel.overlap_grad_reduce false, or a
// communicator that can do neither) every bucket is reduced in finish().
//
// finish() reports the collective time and the part of it backward did not
// hide. (1 - exposed / all_reduce overstates the hidden share: an overlapped
// collective is stretched by the cores it shares and by waiting for the
// other ranks; scripts/bench/grad_overlap.py divides by the all-reduce's time
// in a run without overlap instead.) Thread mode: the
// time finish() waited for the thread once backward was done (on a GPU,
// after its last kernel: the host queues it ahead). Stream mode: how long the second
// stream ran past the end of backward on the compute stream, by CUDA events
// read at the next step without waiting (so a step reports the one before's;
// the first, 0), and the dense collectives' own event times, the step
// before's too (settled by begin(), when they are done). The expert
// gradients' all-reduce after backward adds its host time, this step's, to
// both (every mode).
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "core/device_runtime.h"
#include "runtime/params.h"
#include "runtime/parallel.h"

namespace sy {

struct ReduceTimes {
  double all_reduce_s = 0;  // seconds in gradient collectives, this step (stream mode: the dense ones the step before's)
  double exposed_s = 0;     // seconds finish() waited for them
};

class GradientReducer {
 public:
  // scatter (parallel.reduce_scatter_grads, with sharded moments): each
  // bucket, and the expert gradients, reduce-scattered over the moments'
  // parts: a rank's own part holds the mean, the rest of the arena
  // unspecified values (gradient_norm then reads the parts).
  GradientReducer(Ctx& ctx, ParamStore& params, ParallelContext& par, int64_t bucket_bytes, bool overlap,
                  bool scatter = false);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  void begin();                // a backward starts
  void ready(int64_t offset);  // dense gradients at arena offsets >= offset are final
  ReduceTimes finish();        // reduces the rest, waits, then the expert gradients
  enum class Mode { none, thread, stream };
  Mode mode() const { return mode_; }
  bool overlapping() const { return mode_ != Mode::none; }
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Whether kind k's gradients are reduce-scattered (see the constructor).
  bool scatters(ParamKind k) const { return scatter_[static_cast<int>(k)]; }

 private:
  // Arena kind k's elements [begin, end) summed over c and scaled: whole, or
  // (scatter) this rank's part of them.
  void reduce(ParamKind k, std::pair<int64_t, int64_t> range, comm::Communicator& c, Ctx& on, const char* what);
  void worker();
  void wait_for_backward();

  Ctx& ctx_;
  ParamStore& params_;
  ParallelContext& par_;
  Mode mode_ = Mode::none;
  bool scatter_[2] = {false, false};  // by ParamKind: reduce-scattered over its moments' parts
  float scale_;
  // Stream mode, and thread mode on a GPU: the second stream. Stream mode:
  // the lag of its last bucket behind backward.
  std::unique_ptr<SideStream> side_;
  StreamLag lag_;
  // Stream mode: the grads communicator's comm_seconds() at the last
  // begin(), and the step before's dense collective seconds.
  double grads_seconds_ = 0, last_step_dense_s_ = 0;
  std::vector<std::pair<int64_t, int64_t>> buckets_;  // [begin, end), descending
  size_t launched_ = 0;  // buckets handed out this step
  // Thread mode: where each bucket's gradients are written on the compute
  // stream (recorded by ready(), waited for by the thread), and its queue of
  // bucket indices.
  std::unique_ptr<StreamMark[]> marks_;
  StreamMark backward_end_;  // the compute stream's backward, done (finish())
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<size_t> queue_;
  int64_t in_flight_ = 0;
  double busy_s_ = 0;
  bool stop_ = false;
  std::exception_ptr failed_;  // the thread's exception, rethrown by finish()
  std::thread thread_;
};

}  // namespace sy
