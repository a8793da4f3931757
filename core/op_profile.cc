#include "core/op_profile.h"

#include <algorithm>
#include <chrono>

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

OpProfiler::OpProfiler(std::unique_ptr<IntervalClock> clock) : clock_(std::move(clock)) {}

void OpProfiler::begin_step() {
  active_ = true;
  owner_ = std::this_thread::get_id();
  open_.clear();
  step_start_s_ = now_s();
}

void OpProfiler::begin(const char* op) {
  if (std::this_thread::get_id() != owner_) return;
  if (depth_++ > 0 || !active_) return;  // inside another op: its time is the outer op's
  clock_->mark(2 * open_.size());
  open_.push_back(op);
}

void OpProfiler::end() {
  if (std::this_thread::get_id() != owner_) return;
  if (--depth_ > 0 || !active_ || open_.empty()) return;
  clock_->mark(2 * open_.size() - 1);
}

void OpProfiler::end_step() {
  if (!active_) return;
  active_ = false;
  if (!open_.empty()) clock_->wait(2 * open_.size() - 1);
  for (size_t i = 0; i < open_.size(); ++i) {
    auto it = std::find_if(totals_.begin(), totals_.end(), [&](const Row& r) { return r.op == open_[i]; });
    if (it == totals_.end()) it = totals_.insert(totals_.end(), Row{open_[i], 0, 0});
    ++it->calls;
    it->ms += clock_->ms(2 * i, 2 * i + 1);
  }
  open_.clear();
  ++steps_;
  step_ms_ += 1e3 * (now_s() - step_start_s_);
}

std::vector<OpProfiler::Row> OpProfiler::rows() const {
  std::vector<Row> r = totals_;
  std::stable_sort(r.begin(), r.end(), [](const Row& a, const Row& b) { return a.ms > b.ms; });
  return r;
}

}  // namespace sy
