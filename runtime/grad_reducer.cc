#include "runtime/grad_reducer.h"

#include <chrono>

#include "ops/elementwise.h"
#include "runtime/optimizer_shard.h"

namespace sy {

namespace {
double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}
}  // namespace

GradientReducer::GradientReducer(Ctx& ctx, ParamStore& params, ParallelContext& par, int64_t bucket_bytes,
                                 bool overlap, bool scatter)
    : ctx_(ctx), params_(params), par_(par), scale_(1.f / static_cast<float>(par.world_size())) {
  for (ParamKind k : {ParamKind::dense, ParamKind::expert})
    scatter_[static_cast<int>(k)] = scatter && params.moment_parts(k) > 1;
  if (overlap && par.world_size() > 1 && par.grads) {
    if (!ctx.device.is_cpu() && par.grads->stream_ordered())
      mode_ = Mode::stream;
    else if (par.grads->concurrent_collectives() && par.world->concurrent_collectives())
      mode_ = Mode::thread;
  }
  // Buckets in reverse creation order, each closed once it holds bucket_bytes.
  const std::vector<Param*> all = params.all();
  int64_t end = -1, begin = 0;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    const Param& p = **it;
    if (p.expert()) continue;
    if (end < 0) end = p.offset + p.value.numel();
    begin = p.offset;
    if ((end - begin) * static_cast<int64_t>(sizeof(float)) >= bucket_bytes) {
      buckets_.emplace_back(begin, end);
      end = -1;
    }
  }
  if (end >= 0) buckets_.emplace_back(begin, end);
  if (mode_ == Mode::stream || (mode_ == Mode::thread && !ctx.device.is_cpu()))
    side_ = std::make_unique<SideStream>(ctx_);
  if (mode_ == Mode::thread) {
    marks_ = std::make_unique<StreamMark[]>(buckets_.size());
    thread_ = std::thread([this] { worker(); });
  }
}

GradientReducer::~GradientReducer() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void GradientReducer::reduce(ParamKind k, std::pair<int64_t, int64_t> range, comm::Communicator& c, Ctx& on,
                             const char* what) {
  const Tensor& grad = params_.arena(k).grad;
  Tensor t = grad.rows(range.first, range.second);
  if (!scatter_[static_cast<int>(k)]) {
    c.all_reduce_sum(t, on.stream, what);
    ops::scale(on, t, scale_);
    return;
  }
  // (c's ranks are the moments' group's, in its order: the world for the
  // dense arena, the replicas for the experts')
  const ElementRange r{range.first, range.second}, own = owned_elements(params_, k, r);
  c.reduce_scatter_sum_v(t, moment_pieces(params_, k, r), on.stream, what);
  if (own.size() == 0) return;
  Tensor mine = grad.rows(own.begin, own.end);
  ops::scale(on, mine, scale_);
}

void GradientReducer::worker() {
  // A new thread starts on device 0: the rank's own device first (it waits
  // for the compute stream's events, MPI stages device tensors, and scale
  // runs on the second stream).
  try {
    use_device(ctx_);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    failed_ = std::current_exception();
  }
  for (;;) {
    size_t i;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      i = queue_.front();
      queue_.pop_front();
    }
    double busy = 0;
    try {
      bool skip;
      {
        std::lock_guard<std::mutex> lock(mu_);
        skip = failed_ != nullptr;  // after a failure: drain the queue, reduce nothing
      }
      if (!skip) {
        marks_[i].wait_host();  // the bucket's gradients are written (on the host: at once)
        const double t0 = now_s();
        reduce(ParamKind::dense, buckets_[i], *par_.grads, side_ ? side_->ctx() : ctx_, "dense gradients");
        if (side_) side_->synchronize();  // its scale done too: nothing pending once finish() wakes
        busy = now_s() - t0;
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failed_) failed_ = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_s_ += busy;
      --in_flight_;
    }
    cv_.notify_all();
  }
}

void GradientReducer::begin() {
  launched_ = 0;
  busy_s_ = 0;
  if (mode_ == Mode::stream) {
    // The step before's collectives, all done by now (its gradient norm
    // read a value computed after them), so settling them does not wait;
    // reported by this step's finish(), as its exposed time is.
    par_.grads->settle_comm_seconds();
    const double s = par_.grads->comm_seconds();
    last_step_dense_s_ = s - grads_seconds_;
    grads_seconds_ = s;
  }
}

void GradientReducer::ready(int64_t offset) {
  if (mode_ == Mode::stream) {
    bool ordered = false;
    for (; launched_ < buckets_.size() && buckets_[launched_].first >= offset; ++launched_) {
      if (!ordered) stream_wait(side_->ctx(), ctx_), ordered = true;  // after backward's work so far
      reduce(ParamKind::dense, buckets_[launched_], *par_.grads, side_->ctx(), "dense gradients");
    }
    return;
  }
  if (mode_ != Mode::thread) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (; launched_ < buckets_.size() && buckets_[launched_].first >= offset; ++launched_) {
    marks_[launched_].record(ctx_);  // its gradients: the compute stream's work so far
    queue_.push_back(launched_);
    ++in_flight_;
  }
  cv_.notify_all();
}

// On a GPU the host queues backward ahead of it: the time finish() waits
// (exposed) or reduces (no overlap) starts once backward is done, not while
// its last kernels still run. Nothing on the host.
void GradientReducer::wait_for_backward() {
  backward_end_.record(ctx_);
  backward_end_.wait_host();
}

ReduceTimes GradientReducer::finish() {
  ReduceTimes t;
  SY_CHECK(!params_.grads_pending(), "gradient reducer: some expert gradients are unwritten (zero_grad without a backward)");
  if (par_.world_size() == 1) return t;
  if (mode_ == Mode::stream) {
    ready(0);
    t.exposed_s = lag_.last_ms() / 1e3;  // the step before's (its events are done by now)
    lag_.mark(ctx_, side_->ctx());
    stream_wait(ctx_, side_->ctx());  // the optimizer after the last bucket
    t.all_reduce_s = last_step_dense_s_;  // (the step before's, as exposed_s; see begin())
  } else if (mode_ == Mode::thread) {
    ready(0);
    wait_for_backward();
    const double w0 = now_s();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return in_flight_ == 0; });
    t.exposed_s = now_s() - w0;
    t.all_reduce_s = busy_s_;
    if (failed_) std::rethrow_exception(failed_);  // (each bucket's scale is done: the thread waited for it)
  } else {
    wait_for_backward();
    const double t0 = now_s();
    for (const auto& b : buckets_) reduce(ParamKind::dense, b, *par_.world, ctx_, "dense gradients");
    t.all_reduce_s = t.exposed_s = now_s() - t0;
  }
  const double e0 = now_s();
  const int64_t n = params_.arena(ParamKind::expert).numel();
  if (n > 0) reduce(ParamKind::expert, {0, n}, *par_.replicas, ctx_, "expert gradients");
  const double e = now_s() - e0;
  t.all_reduce_s += e;
  t.exposed_s += e;
  return t;
}

}  // namespace sy
