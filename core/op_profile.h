// OpProfiler: where a training step's time goes, op by op. Every op entry
// point opens an OpScope on its Ctx's profiler (SY_DISPATCH in ops/backend.h);
// the outermost op of a nest owns the interval (what it calls through other
// entry points is part of it), so the rows add up to the time spent inside
// ops, and the step's wall time less that sum is the time between ops
// (launch gaps, host work, waits). An op's parts, the scopes opened inside
// the outermost op (an entry point it calls, or an OpScope it opens around a
// stage of its own; at any depth, named by their path: "op > part > sub"),
// are kept apart (parts()): where in the op its time goes, not added to the
// step's sum a second time.
// On the host an interval is wall time; on a
// CUDA stream it is the time between two events recorded on the stream
// around the op's launches: the GPU's time for that op's kernels (the device
// machine has no working profiler counters, so CUDA events, as issue 17 asks).
//
// Beside its clock's interval each op and part records the host's own time
// inside the call (steady clock: enqueueing its work, and any wait) and how
// many times the host waited for the device in it (core/context.h's
// host_waits: a process-wide count, so a wait on another thread, such as a
// gradient reducer's, counts in the op this thread has open; waits on events
// or whole streams are not counted). On a GPU these say what bounds an op: device time well above
// host time is the device's work; host time at or above device time, or a
// wait, means the device sat idle inside the op while the host caught up.
//
// Recording costs two event records per op and per part, and one wait per
// step (for the last event), so a profiled run is slower than an unprofiled one: measure
// speed without it, and where the time goes with it. Only the thread that
// began the step records (ops another thread runs on the same Ctx, such as a
// gradient reducer's, are not counted as ops).
#pragma once
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/allocator.h"

namespace sy {

// Marks on one clock: mark(i) stamps slot i now (host) or where the stream
// has got to (CUDA); ms(a, b) is the time from slot a to slot b once wait()
// has returned.
class IntervalClock {
 public:
  virtual ~IntervalClock() = default;
  virtual void mark(size_t slot) = 0;
  virtual void wait(size_t last_slot) = 0;
  virtual double ms(size_t a, size_t b) = 0;
  virtual const char* name() const = 0;  // "host" or "cuda events"
};

class OpProfiler {
 public:
  explicit OpProfiler(std::unique_ptr<IntervalClock> clock);

  // Between begin_step() and end_step() the outermost ops are recorded.
  void begin_step();
  void end_step();  // waits for the step's last mark, then adds the intervals up
  void begin(const char* op);
  void end();

  struct Row {
    std::string op;
    int64_t calls = 0;
    double ms = 0;       // the clock's (host wall time, or the stream's events)
    double host_ms = 0;  // the host's time inside the calls
    int64_t waits = 0;   // the host's waits for the device inside the calls
  };
  std::vector<Row> rows() const;   // the outermost ops, by time, largest first
  std::vector<Row> parts() const;  // "op > part", by time, largest first
  int64_t steps() const { return steps_; }
  double step_ms() const { return step_ms_; }  // wall time of the profiled steps, in all
  const char* clock_name() const { return clock_->name(); }

 private:
  std::unique_ptr<IntervalClock> clock_;
  bool active_ = false;
  std::thread::id owner_;  // the thread that began the step
  // This step's intervals, in the order they began: an outermost op, or a
  // part (a scope inside one, named by its path); each its own two clock slots.
  struct Interval {
    std::string name;
    size_t begin = 0, end = 0;
    bool part = false;
    double host_begin_s = 0, host_end_s = 0;
    int64_t waits_begin = 0, waits_end = 0;
  };
  std::vector<Interval> open_;
  std::vector<size_t> nest_;  // per open scope, its interval (kNone: not recorded)
  size_t next_slot_ = 0;
  std::vector<Row> totals_, part_totals_;
  int64_t steps_ = 0;
  double step_ms_ = 0, step_start_s_ = 0;
};

std::unique_ptr<IntervalClock> host_clock();
// Events on `stream` (CUDA builds; elsewhere throws BackendError).
std::unique_ptr<IntervalClock> cuda_event_clock(Stream stream);

// What SY_DISPATCH opens: nothing without a profiler.
class OpScope {
 public:
  OpScope(OpProfiler* p, const char* op) : p_(p) {
    if (p_) p_->begin(op);
  }
  // (A clock that fails here - a CUDA event after a kernel fault - must not
  // throw from a destructor, which would end the process, or unwind past
  // the op's own error: the sticky error surfaces at the next checked call.)
  ~OpScope() {
    if (!p_) return;
    try {
      p_->end();
    } catch (const std::exception&) {
    }
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpProfiler* p_;
};

}  // namespace sy
