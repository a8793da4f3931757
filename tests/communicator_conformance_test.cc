// One conformance suite for every Communicator (MPI and NCCL), under mpirun:
// payloads tagged with their source, destination and index, checked for
// exact equality; uneven and empty counts; rows of several elements; every
// dtype; sub-groups. Instances:
//   mpi_host    MpiCommunicator on host tensors (CI, np 1/2/4)
//   mpi_device  MpiCommunicator on device tensors (staged through the host:
//               several ranks on one GPU); needs a GPU
//   nccl        NcclCommunicator on device tensors; needs a GPU per rank
//               (NCCL refuses two ranks on one GPU: np 1 on the GPU machine)
//   nccl_nonblocking  the same over a non-blocking NCCL communicator (each
//               call polled out of ncclInProgress; its split waits for the
//               child's handle), the mode kept beside the blocking default
// (Timeouts end the process by design; parallel_fault_test.sh checks them.)
// Also the gradient reducer over each, overlapped: thread mode on MPI, stream
// mode on NCCL (its buckets queued on a second stream beside the compute
// stream's work), with 2 ranks or more.
#include <gtest/gtest.h>

#include <algorithm>
#include <utility>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <thread>

#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "core/device_runtime.h"
#include "mpi_main.h"
#include "ops/elementwise.h"
#include "runtime/grad_reducer.h"

namespace sy {
namespace {

enum class Backend { mpi_host, mpi_device, nccl, nccl_nonblocking };

bool is_nccl(Backend b) { return b == Backend::nccl || b == Backend::nccl_nonblocking; }
comm::NcclMode nccl_mode(Backend b) {
  return b == Backend::nccl_nonblocking ? comm::NcclMode::nonblocking : comm::NcclMode::blocking;
}

comm::MpiCommunicator& mpi_world() {
  static comm::MpiCommunicator w(MPI_COMM_WORLD);
  w.set_timeout_s(60);
  return w;
}

class Conformance : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::mpi_host) {
      comm_ = &mpi_world();
      ctx_ = &host_ctx();
      return;
    }
    if (!cuda_available()) GTEST_SKIP() << "no GPU visible (or built without CUDA): device communicators not tested";
    static std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(0);
    ctx_ = &rt->ctx();
    if (GetParam() == Backend::mpi_device) {
      comm_ = &mpi_world();
      return;
    }
    if (!comm::nccl_available()) GTEST_SKIP() << "built without NCCL";
    // SY_NCCL_SHARED_GPU=1 tries anyway, each process given its own
    // NCCL_HOSTID (unsupported by NVIDIA: scripts/gpu_check.sh's smoke run).
    if (mpi_world().size() > 1 && !std::getenv("SY_NCCL_SHARED_GPU"))
      GTEST_SKIP() << "NCCL needs a GPU per rank (it refuses two ranks on one GPU); run with -np 1 on one GPU";
    // One communicator a mode, made at its first test.
    static std::unique_ptr<comm::Communicator> nccl[2];
    std::unique_ptr<comm::Communicator>& c = nccl[GetParam() == Backend::nccl_nonblocking];
    if (!c) c = comm::make_nccl_communicator(mpi_world(), 0, 60, nccl_mode(GetParam()));
    comm_ = c.get();
  }
  comm::Communicator& comm() { return *comm_; }
  Ctx& ctx() { return *ctx_; }

  // A host tensor of `dtype` whose element i holds v(i), moved to the backend.
  template <class F>
  Tensor make(Shape s, DType dtype, F v) {
    Tensor h = Tensor::empty(s, dtype, host_ctx());
    for (int64_t i = 0; i < h.numel(); ++i) set(h, i, v(i));
    return h.to(ctx());
  }
  static void set(Tensor& h, int64_t i, double x) {
    switch (h.dtype()) {
      case DType::f32: h.data<float>()[i] = static_cast<float>(x); break;
      case DType::bf16: h.data<bf16_t>()[i].bits = f32_to_bf16(static_cast<float>(x)); break;
      case DType::i32: h.data<int32_t>()[i] = static_cast<int32_t>(x); break;
      case DType::i64: h.data<int64_t>()[i] = static_cast<int64_t>(x); break;
      case DType::f64: h.data<double>()[i] = x; break;
    }
  }
  static double get(const Tensor& h, int64_t i) {
    switch (h.dtype()) {
      case DType::f32: return h.data<float>()[i];
      case DType::bf16: return bf16_to_f32(h.data<bf16_t>()[i].bits);
      case DType::i32: return h.data<int32_t>()[i];
      case DType::i64: return static_cast<double>(h.data<int64_t>()[i]);
      case DType::f64: return h.data<double>()[i];
    }
    return NAN;
  }

 private:
  comm::Communicator* comm_ = nullptr;
  Ctx* ctx_ = nullptr;
};

const DType kAll[] = {DType::f32, DType::bf16, DType::i32, DType::i64, DType::f64};

// Tag of element e of row i of the block src sends to dst: small enough to be
// exact in bf16 (8 significant bits) when folded modulo 128.
double tag(int src, int dst, int64_t i, int64_t e, DType d) {
  const double t = src * 997 + dst * 31 + i * 3 + e;
  return d == DType::bf16 ? std::fmod(t, 128.0) : t;
}

TEST_P(Conformance, AllToAllVTaggedRowsUnevenAndEmptyEveryDtype) {
  const int R = comm().rank(), W = comm().size();
  const int64_t width = 3;
  // Rows from s to d: (s + 2d) % 3 * 2, so some blocks are empty, and one
  // more to itself (so one rank moves rows too).
  auto rows = [](int s, int d) { return static_cast<int64_t>((s + 2 * d) % 3) * 2 + (s == d); };
  std::vector<int64_t> sr(W), rr(W);
  int64_t ns = 0, nr = 0;
  for (int d = 0; d < W; ++d) sr[d] = rows(R, d), rr[d] = rows(d, R), ns += sr[d], nr += rr[d];
  for (DType dt : kAll) {
    SCOPED_TRACE(dtype_name(dt));
    // Send block for d at row offset sum_{d'<d} sr[d'].
    std::vector<std::tuple<int, int64_t>> who(ns);
    for (int d = 0, o = 0; d < W; ++d)
      for (int64_t i = 0; i < sr[d]; ++i) who[o++] = {d, i};
    const Tensor send = make({ns, width}, dt, [&](int64_t k) {
      auto [d, i] = who[k / width];
      return tag(R, d, i, k % width, dt);
    });
    Tensor recv = make({nr, width}, dt, [](int64_t) { return -1; });
    comm().all_to_all_v(send, sr, recv, rr, ctx().stream, "conformance");
    const Tensor got = recv.to(host_ctx());
    int64_t row = 0;
    for (int s = 0; s < W; ++s)
      for (int64_t i = 0; i < rr[s]; ++i, ++row)
        for (int64_t e = 0; e < width; ++e)
          ASSERT_EQ(get(got, row * width + e), tag(s, R, i, e, dt)) << "row " << i << " from rank " << s;
  }
}

// send and recv may not overlap (one buffer for both would have a rank's own
// rows, copied first on NCCL, overwrite rows still to be sent): refused on
// every rank before anything moves; adjacent views of one buffer are fine.
TEST_P(Conformance, AllToAllVRefusesOverlappingBuffers) {
  const int R = comm().rank(), W = comm().size();
  std::vector<int64_t> one(W, 1);
  Tensor buf = make({2 * W + 1, 3}, DType::f32, [&](int64_t k) { return R * 1000 + k; });
  const Tensor send = buf.rows(0, W);
  Tensor overlapping = buf.rows(W - 1, 2 * W - 1), adjacent = buf.rows(W, 2 * W);
  try {
    comm().all_to_all_v(send, one, overlapping, one, ctx().stream, "overlap");
    ADD_FAILURE() << "overlapping send and recv were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("all_to_all_v in 'overlap': send and receive buffers overlap"),
              std::string::npos) << e.what();
  }
  comm().all_to_all_v(send, one, adjacent, one, ctx().stream, "adjacent");
  const Tensor got = adjacent.to(host_ctx());
  for (int s = 0; s < W; ++s)  // row s: rank s's row R
    for (int64_t e = 0; e < 3; ++e) ASSERT_EQ(got.f32()[s * 3 + e], s * 1000 + R * 3 + e) << "from rank " << s;
}

// Sums of (R + 1) (i mod 16 + 1), exact in every dtype: a small tensor and
// one over 1 MiB with a tail (MPI on one node: the ring, then
// MPI_Allgatherv); MPI also with the ring at every size (the small one's
// later parts empty), with MPI_Allreduce at every size, and in pieces of at
// most 1000 elements (the way past MPI's int counts; the last one short).
TEST_P(Conformance, AllReduceSumsEveryAddableDtype) {
  const int R = comm().rank(), W = comm().size();
  const bool mpi = !is_nccl(GetParam());
  if (mpi && W > 1) EXPECT_TRUE(mpi_world().ring_all_reduce(int64_t{1} << 20)) << "the ring is not tested";
  for (const std::string way : {"chosen", "ring", "MPI_Allreduce", "pieces"}) {  // (MPI: the ring as it chooses, always, never)
    if (way != "chosen" && !mpi) break;
    if (way == "pieces") mpi_world().set_max_piece_elements(1000), mpi_world().set_ring_all_reduce(true, 0);
    else if (way != "chosen") mpi_world().set_ring_all_reduce(way == "ring", 0);
    for (const int64_t n : {int64_t{10}, int64_t{(1 << 18) + 3}})
      for (DType dt : kAll) {
        if (dt == DType::bf16 && mpi) continue;  // MPI cannot add bf16
        SCOPED_TRACE(std::string(dtype_name(dt)) + " n " + std::to_string(n) + " " + way);
        Tensor t = make({n}, dt, [&](int64_t i) { return (R + 1) * (i % 16 + 1); });
        comm().all_reduce_sum(t, ctx().stream, "conformance");
        const Tensor got = t.to(host_ctx());
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(get(got, i), W * (W + 1) / 2.0 * (i % 16 + 1)) << "element " << i;
      }
    if (way != "chosen") mpi_world().set_ring_all_reduce(true);
    if (way == "pieces") mpi_world().set_max_piece_elements(INT32_MAX);
  }
  EXPECT_EQ(comm().all_reduce_sum(static_cast<double>(R), "conformance"), W * (W - 1) / 2.0);
}

TEST_P(Conformance, BroadcastFromTheLastRankEveryDtype) {
  const int R = comm().rank(), W = comm().size();
  for (DType dt : kAll) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor t = make({7}, dt, [&](int64_t i) { return R == W - 1 ? 10 + i : -1; });
    comm().broadcast(t, W - 1, ctx().stream, "conformance");
    const Tensor got = t.to(host_ctx());
    for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(get(got, i), 10 + i);
  }
}

// The parts of all_gather_v's and reduce_scatter_sum_v's cases over W
// ranks, and each one's first row (W + 1 values): equal (3 rows each) or
// uneven (ranks 1 and 2's empty, rank r's 2r + 1 rows: at 3 ranks and more
// a ring step where a rank sends and receives nothing, which must still
// keep step with its neighbours).
std::pair<std::vector<int64_t>, std::vector<int64_t>> parts(int W, bool equal) {
  std::vector<int64_t> rows(W), first(W + 1, 0);
  for (int r = 0; r < W; ++r)
    rows[r] = equal ? 3 : (r == 1 || r == 2 ? 0 : 2 * r + 1), first[r + 1] = first[r] + rows[r];
  return {rows, first};
}

// all_gather_v in place: each rank's part tagged with its rank, row and
// element, every other row poisoned (-1, no tag's value); uneven parts with
// an empty one (rank 1's), then equal parts (NCCL's in-place all-gather),
// through the backend's collective and through the base class's broadcasts.
TEST_P(Conformance, AllGatherVUnevenEqualAndEmptyEveryDtype) {
  const int R = comm().rank(), W = comm().size();
  const int64_t w = 3;
  for (const bool equal : {false, true})
    for (const bool fallback : {false, true})
      for (DType dt : kAll) {
        SCOPED_TRACE(std::string(dtype_name(dt)) + (equal ? " equal" : " uneven") + (fallback ? " fallback" : ""));
        const auto split = parts(W, equal);
        const std::vector<int64_t> &rows = split.first, &first = split.second;
        auto owner = [&](int64_t row) {  // the rank whose part holds the row
          return static_cast<int>(std::upper_bound(first.begin(), first.end(), row) - first.begin()) - 1;
        };
        Tensor t = make({first[W], w}, dt, [&](int64_t i) {
          const int64_t row = i / w;
          const int src = owner(row);
          return src == R ? tag(src, 0, row - first[src], i % w, dt) : -1;
        });
        if (fallback) comm().Communicator::all_gather_v(t, rows, ctx().stream, "conformance");
        else comm().all_gather_v(t, rows, ctx().stream, "conformance");
        const Tensor got = t.to(host_ctx());
        for (int64_t i = 0; i < got.numel(); ++i) {
          const int64_t row = i / w;
          const int src = owner(row);
          ASSERT_EQ(get(got, i), tag(src, 0, row - first[src], i % w, dt)) << "row " << row << " of rank " << src;
        }
      }
  // A part count that is not the group's, or parts that are not the tensor's rows: one line, nothing moved.
  Tensor t = make({2, 1}, DType::f32, [](int64_t) { return 0; });
  EXPECT_THROW(comm().all_gather_v(t, std::vector<int64_t>(W + 1, 0), ctx().stream, "conformance"), Error);
  std::vector<int64_t> rows(W, 0);
  rows[0] = 3;
  EXPECT_THROW(comm().all_gather_v(t, rows, ctx().stream, "conformance"), Error);
}

// reduce_scatter_sum_v in place: rank R's element i is (R + 1) (i + 1); each
// rank's own part must hold the sum W (W + 1) / 2 (i + 1), whatever the rest
// holds; uneven parts with an empty one, equal parts, the base class's
// all-reduce; every dtype the backend adds.
TEST_P(Conformance, ReduceScatterVUnevenEqualAndEmptyEveryAddableDtype) {
  const int R = comm().rank(), W = comm().size();
  const int64_t w = 2;
  for (const bool equal : {false, true})
    for (const bool fallback : {false, true})
      for (DType dt : kAll) {
        if (dt == DType::bf16 && !is_nccl(GetParam())) continue;  // MPI cannot add bf16
        SCOPED_TRACE(std::string(dtype_name(dt)) + (equal ? " equal" : " uneven") + (fallback ? " fallback" : ""));
        const auto split = parts(W, equal);
        const std::vector<int64_t> &rows = split.first, &first = split.second;
        Tensor t = make({first[W], w}, dt, [&](int64_t i) { return (R + 1) * (i % 16 + 1); });
        if (fallback) comm().Communicator::reduce_scatter_sum_v(t, rows, ctx().stream, "conformance");
        else comm().reduce_scatter_sum_v(t, rows, ctx().stream, "conformance");
        const Tensor got = t.to(host_ctx());
        for (int64_t i = first[R] * w; i < first[R + 1] * w; ++i)
          ASSERT_EQ(get(got, i), W * (W + 1) / 2.0 * (i % 16 + 1)) << "element " << i;
      }
  Tensor t = make({2, 1}, DType::f32, [](int64_t) { return 0; });
  std::vector<int64_t> rows(W, 0);
  rows[0] = 3;
  EXPECT_THROW(comm().reduce_scatter_sum_v(t, rows, ctx().stream, "conformance"), Error);
}

// MPI stages device tensors through page-locked host blocks pinned once:
// repeating a collective pins nothing more; a group of one stages nothing
// (its collectives move nothing between ranks).
TEST_P(Conformance, MpiDeviceStagingIsPinnedOnceAndReused) {
  if (GetParam() != Backend::mpi_device) GTEST_SKIP() << "MPI's staging of device tensors";
  const int W = comm().size();
  Tensor t = make({1000, 4}, DType::f32, [](int64_t i) { return static_cast<double>(i % 7); });
  comm().all_reduce_sum(t, ctx().stream, "conformance");
  const size_t pinned = mpi_world().host_staging_bytes();
  if (W == 1) EXPECT_EQ(pinned, 0u);
  else EXPECT_GT(pinned, 0u);
  for (int i = 0; i < 4; ++i) comm().all_reduce_sum(t, ctx().stream, "conformance");
  EXPECT_EQ(mpi_world().host_staging_bytes(), pinned) << "each collective pinned memory anew";
  const Tensor got = t.to(host_ctx());
  for (int64_t i = 0; i < 4000; ++i) ASSERT_EQ(got.data<float>()[i], std::pow(W, 5) * (i % 7)) << i;
}

TEST_P(Conformance, CountsAndSubGroups) {
  const int R = comm().rank(), W = comm().size();
  std::vector<int64_t> send(2 * W), recv;
  for (int d = 0; d < W; ++d) send[2 * d] = R * 100 + d, send[2 * d + 1] = -R;
  comm().all_to_all_counts(send, recv, "conformance");
  ASSERT_EQ(recv.size(), send.size());
  for (int s = 0; s < W; ++s) {
    EXPECT_EQ(recv[2 * s], s * 100 + R);
    EXPECT_EQ(recv[2 * s + 1], -s);
  }
  // Even and odd ranks, ordered by descending rank: a collective inside each.
  auto sub = comm().split(R % 2, -R);
  EXPECT_EQ(sub->size(), (W + 1 - R % 2) / 2);
  EXPECT_EQ(sub->world_ranks()[sub->rank()], comm().world_ranks()[R]);
  for (int i = 1; i < sub->size(); ++i) EXPECT_GT(sub->world_ranks()[i - 1], sub->world_ranks()[i]);
  Tensor t = make({1}, DType::i64, [&](int64_t) { return R; });
  sub->all_reduce_sum(t, ctx().stream, "conformance");
  int64_t want = 0;
  for (int r = R % 2; r < W; r += 2) want += r;
  EXPECT_EQ(get(t.to(host_ctx()), 0), want);
  sub->barrier("conformance");
}

// Splits one after another, as ParallelContext::create makes its groups,
// each child used at once: a non-blocking NCCL split hands over the child
// before its parent is back from in progress, and a call on that parent (the
// next split) is then refused, so the split waits for the parent too.
TEST_P(Conformance, SplitsOneAfterAnother) {
  const int R = comm().rank(), W = comm().size();
  for (int i = 0; i < 20; ++i) {
    auto a = comm().split(0, R), b = comm().split(R % 2, R);
    ASSERT_EQ(a->size(), W) << "split " << i;
    Tensor t = make({1}, DType::i64, [&](int64_t) { return 1; });
    b->all_reduce_sum(t, ctx().stream, "conformance");
    EXPECT_EQ(get(t.to(host_ctx()), 0), (W + 1 - R % 2) / 2) << "split " << i;
  }
}

// Dense buckets averaged over the world while "backward" goes on, expert
// gradients over their replicas, overlapped and not, on this backend's
// tensors: exact means of small integers. On a device each parameter's
// gradient is written by a copy queued on the compute stream behind 1 GiB
// of memory traffic (scales of a scratch tensor), as backward
// writes it, and ready() comes while it is still queued: a reducer that reads
// a bucket before the compute stream's work up to ready() reduces the -1s
// still there (the MPI thread waits for ready()'s event, NCCL's second
// stream for the compute stream).
TEST_P(Conformance, GradientReducerAveragesOverlappedOrNot) {
  const int W = comm().size(), R = comm().rank();
  if (W < 2) GTEST_SKIP() << "one rank: nothing to reduce";
  std::unique_ptr<comm::Communicator> world;
  if (is_nccl(GetParam()))
    world = comm::make_nccl_communicator(mpi_world(), 0, 60, nccl_mode(GetParam()));
  else
    world = std::make_unique<comm::MpiCommunicator>(MPI_COMM_WORLD);
  auto par = ParallelContext::create(std::move(world), W, 60);
  for (const bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlapped" : "after backward");
    ParamStore ps;
    Rng rng(1);
    std::vector<Param*> dense;
    for (int i = 0; i < 6; ++i) dense.push_back(ps.add("p" + std::to_string(i), {5 + i, 3}, rng, 0.1f, true));
    Param* e = ps.add_rows("experts", {W, 4}, R, R + 1, rng, 0.1f, true);
    ps.finalize(ctx());
    GradientReducer reducer(ctx(), ps, *par, 64, overlap);
    // (MPI overlaps in thread mode only: without MPI_THREAD_MULTIPLE this
    // would test no overlap at all, so it says so)
    if (overlap)
      EXPECT_EQ(reducer.mode(), is_nccl(GetParam()) ? GradientReducer::Mode::stream : GradientReducer::Mode::thread);
    const bool device = !ctx().device.is_cpu();
    Tensor busy = make({device ? 1 << 24 : 1 << 16}, DType::f32, [](int64_t i) { return static_cast<double>(i % 7); });
    auto grad_of = [&](Param* p) { return make(p->grad.shape(), DType::f32, [&](int64_t i) { return (R + 1) * (i + 1.0); }); };
    std::vector<Tensor> values;
    for (Param* p : dense) values.push_back(grad_of(p));
    for (int step = 0; step < 2; ++step) {
      for (Param* p : ps.all()) p->grad.copy_from(make(p->grad.shape(), DType::f32, [](int64_t) { return -1.0; }), ctx());
      reducer.begin();
      e->grad.copy_from(grad_of(e), ctx());
      for (int i = static_cast<int>(dense.size()) - 1; i >= 0; --i) {
        for (int r = 0; r < (device ? 8 : 1); ++r) ops::scale(ctx(), busy, 1.f);  // (64 MiB read and written a time)
        dense[i]->grad.copy_from(values[i], ctx());  // (device to device: queued, the host does not wait)
        reducer.ready(dense[i]->offset);
        ops::scale(ctx(), busy, 1.f);  // more compute-stream work behind the launched buckets
        // (a bucket launched too early would reduce the -1s still there;
        // a moment for the thread mode's reducer to run now)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      reducer.finish();
      for (Param* p : dense) {
        const Tensor g = p->grad.to(host_ctx());
        for (int64_t i = 0; i < g.numel(); ++i)
          ASSERT_EQ(g.data<float>()[i], W * (W + 1) / 2.f * (i + 1) * (1.f / W)) << p->name;
      }
      // (the sums times the float 1 / W, the reducer's contract: at 3 and 5
      // ranks x / W differs from it in the last bit for some x)
      const Tensor g = e->grad.to(host_ctx());
      for (int64_t i = 0; i < g.numel(); ++i) ASSERT_EQ(g.data<float>()[i], (R + 1) * (i + 1.f) * (1.f / W));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Communicators, Conformance,
                         ::testing::Values(Backend::mpi_host, Backend::mpi_device, Backend::nccl,
                                           Backend::nccl_nonblocking),
                         [](const ::testing::TestParamInfo<Backend>& p) {
                           return std::string(p.param == Backend::mpi_host     ? "mpi_host"
                                              : p.param == Backend::mpi_device ? "mpi_device"
                                              : p.param == Backend::nccl       ? "nccl"
                                                                               : "nccl_nonblocking");
                         });

}  // namespace
}  // namespace sy
