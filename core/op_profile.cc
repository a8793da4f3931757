#include "core/op_profile.h"

#include <algorithm>
#include <chrono>

#include "core/context.h"  // host_waits

namespace sy {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class HostClock : public IntervalClock {
 public:
  void mark(size_t slot) override {
    if (slot >= t_.size()) t_.resize(slot + 1);
    t_[slot] = now_s();
  }
  void wait(size_t) override {}
  double ms(size_t a, size_t b) override { return 1e3 * (t_[b] - t_[a]); }
  const char* name() const override { return "host"; }

 private:
  std::vector<double> t_;
};
}  // namespace

std::unique_ptr<IntervalClock> host_clock() { return std::make_unique<HostClock>(); }

namespace {
constexpr size_t kNone = static_cast<size_t>(-1);

void add_to(std::vector<OpProfiler::Row>& totals, const std::string& name, double ms, double host_ms,
            int64_t waits) {
  auto it = std::find_if(totals.begin(), totals.end(), [&](const OpProfiler::Row& r) { return r.op == name; });
  if (it == totals.end()) it = totals.insert(totals.end(), OpProfiler::Row{name});
  ++it->calls;
  it->ms += ms;
  it->host_ms += host_ms;
  it->waits += waits;
}

std::vector<OpProfiler::Row> by_time(std::vector<OpProfiler::Row> r) {
  std::stable_sort(r.begin(), r.end(), [](const OpProfiler::Row& a, const OpProfiler::Row& b) { return a.ms > b.ms; });
  return r;
}
}  // namespace

OpProfiler::OpProfiler(std::unique_ptr<IntervalClock> clock) : clock_(std::move(clock)) {}

void OpProfiler::begin_step() {
  active_ = true;
  owner_ = std::this_thread::get_id();
  open_.clear();
  next_slot_ = 0;
  // Scopes still open from before: theirs are no intervals of this step.
  std::fill(nest_.begin(), nest_.end(), kNone);
  step_start_s_ = now_s();
}


// The outermost scope of a nest is an op; every scope inside it, at any
// depth, is a part, named by its path ("op > part > sub").
void OpProfiler::begin(const char* op) {
  if (std::this_thread::get_id() != owner_) return;
  const bool outer = nest_.empty(), part = !outer && nest_.back() != kNone;
  if (!active_ || !(outer || part)) {
    nest_.push_back(kNone);
    return;
  }
  Interval iv;
  iv.name = part ? open_[nest_.back()].name + " > " + op : op;
  iv.part = part;
  iv.begin = next_slot_++;
  clock_->mark(iv.begin);
  iv.waits_begin = host_waits();  // (the host's stamps inside the clock's marks: not the marks' own cost)
  iv.host_begin_s = now_s();
  nest_.push_back(open_.size());
  open_.push_back(std::move(iv));
}

void OpProfiler::end() {
  if (std::this_thread::get_id() != owner_ || nest_.empty()) return;
  const size_t i = nest_.back();
  nest_.pop_back();
  if (i == kNone || !active_) return;
  open_[i].end = next_slot_++;
  open_[i].host_end_s = now_s();
  open_[i].waits_end = host_waits();
  clock_->mark(open_[i].end);
}

void OpProfiler::end_step() {
  if (!active_) return;
  active_ = false;
  if (next_slot_ > 0) clock_->wait(next_slot_ - 1);
  for (const Interval& iv : open_)
    if (iv.end > iv.begin)  // (closed within the step)
      add_to(iv.part ? part_totals_ : totals_, iv.name, clock_->ms(iv.begin, iv.end),
             1e3 * (iv.host_end_s - iv.host_begin_s), iv.waits_end - iv.waits_begin);
  open_.clear();  // (begin_step resets the slots and the open scopes' indices)
  ++steps_;
  step_ms_ += 1e3 * (now_s() - step_start_s_);
}

std::vector<OpProfiler::Row> OpProfiler::rows() const { return by_time(totals_); }
std::vector<OpProfiler::Row> OpProfiler::parts() const { return by_time(part_totals_); }

}  // namespace sy
