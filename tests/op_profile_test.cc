// OpProfiler (core/op_profile.h): the outermost op owns its interval, only
// the steps between begin_step and end_step count, only the thread that began
// the step records, and an op entry point records through SY_DISPATCH.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "core/context.h"
#include "core/op_profile.h"
#include "ops/elementwise.h"
#include "runtime/op_profile_report.h"

namespace sy {
namespace {

// A clock whose marks are the slot numbers themselves (ms(a, b) = b - a):
// intervals are exact and say which slots the profiler used.
class CountingClock : public IntervalClock {
 public:
  void mark(size_t slot) override { marks.push_back(slot); }
  void wait(size_t last) override { waited = static_cast<int64_t>(last); }
  double ms(size_t a, size_t b) override { return static_cast<double>(b) - static_cast<double>(a); }
  const char* name() const override { return "counting"; }
  std::vector<size_t> marks;
  int64_t waited = -1;
};

void expect_row(const OpProfiler::Row& r, const std::string& op, int64_t calls, double ms) {
  EXPECT_EQ(r.op, op);
  EXPECT_EQ(r.calls, calls) << op;
  EXPECT_DOUBLE_EQ(r.ms, ms) << op;
}

TEST(OpProfiler, TheOutermostOpOwnsItsIntervalInProfiledStepsOnly) {
  auto clock = std::make_unique<CountingClock>();
  CountingClock* c = clock.get();
  OpProfiler p(std::move(clock));
  { const OpScope before(&p, "unprofiled"); }  // before any step: not recorded
  p.begin_step();
  {
    const OpScope outer(&p, "outer");  // slots 0 and 7
    {
      const OpScope inner(&p, "inner");    // a part of outer: slots 1 and 4
      const OpScope deeper(&p, "deeper");  // a part of that part: slots 2 and 3
    }
    const OpScope inner(&p, "inner");  // the same part again: slots 5 and 6
  }
  { const OpScope second(&p, "second"); }  // slots 8, 9
  { const OpScope again(&p, "outer"); }    // slots 10, 11
  std::thread([&] { const OpScope other(&p, "other thread"); }).join();  // not this step's thread
  p.end_step();
  { const OpScope after(&p, "after"); }  // between steps: not recorded
  EXPECT_EQ(c->marks, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(c->waited, 11);
  const std::vector<OpProfiler::Row> rows = p.rows();
  ASSERT_EQ(rows.size(), 2u);
  expect_row(rows[0], "outer", 2, 8.0);  // slots 0-7 and 10-11
  EXPECT_EQ(rows[1].op, "second");
  const std::vector<OpProfiler::Row> parts = p.parts();
  ASSERT_EQ(parts.size(), 2u);
  expect_row(parts[0], "outer > inner", 2, 4.0);  // slots 1-4 and 5-6
  expect_row(parts[1], "outer > inner > deeper", 1, 1.0);
  EXPECT_EQ(p.steps(), 1);
  const nlohmann::json j = op_profile_json(p);
  EXPECT_EQ(j["ops"].size(), 2u);
  EXPECT_EQ(j["parts"].size(), 2u);
  EXPECT_DOUBLE_EQ(j["inside_ops_ms"].get<double>(), 9.0);  // the ops alone: parts are inside them
  const std::string table = op_profile_table(p);
  EXPECT_NE(table.find("outer"), std::string::npos);
  EXPECT_NE(table.find("  outer > inner"), std::string::npos);
}

// A scope open across a step's end is no interval of the next step: neither
// it nor the scopes opened inside it then (which read the stale interval's
// name, out of range before this was guarded) are recorded.
TEST(OpProfiler, AScopeOpenAcrossStepsIsNotRecorded) {
  auto clock = std::make_unique<CountingClock>();
  CountingClock* c = clock.get();
  OpProfiler p(std::move(clock));
  p.begin_step();
  {
    const OpScope stale(&p, "stale");
    p.end_step();
    p.begin_step();
    { const OpScope inside(&p, "inside"); }
  }
  { const OpScope fresh(&p, "fresh"); }
  p.end_step();
  EXPECT_EQ(c->marks, (std::vector<size_t>{0, 0, 1}));  // stale's begin (step 1), fresh's two (step 2)
  ASSERT_EQ(p.rows().size(), 1u);
  EXPECT_EQ(p.rows()[0].op, "fresh");
  EXPECT_TRUE(p.parts().empty());
}

// Each op and part also holds the host's time inside it and the host's
// waits for the device there (core/context.h's count_host_wait): a wait
// counts in every open scope it happens inside, and only there.
TEST(OpProfiler, HostTimeAndWaitsPerOpAndPart) {
  OpProfiler p(std::make_unique<CountingClock>());
  p.begin_step();
  {
    const OpScope outer(&p, "outer");
    count_host_wait();
    {
      const OpScope inner(&p, "inner");
      count_host_wait();
      count_host_wait();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  { const OpScope quiet(&p, "quiet"); }
  count_host_wait();  // between ops: no op's
  p.end_step();
  const std::vector<OpProfiler::Row> rows = p.rows(), parts = p.parts();
  ASSERT_EQ(rows.size(), 2u);
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_EQ(rows[0].op, "outer");
  EXPECT_EQ(rows[0].waits, 3);
  EXPECT_EQ(rows[1].waits, 0);
  EXPECT_EQ(parts[0].waits, 2);
  EXPECT_GE(parts[0].host_ms, 20.0);             // the sleep, on the host's clock
  EXPECT_GE(rows[0].host_ms, parts[0].host_ms);  // the part is inside its op
  EXPECT_LT(rows[1].host_ms, 20.0);
  const nlohmann::json j = op_profile_json(p);
  EXPECT_DOUBLE_EQ(j["ops"][0]["host_waits_per_step"].get<double>(), 3.0);
  EXPECT_GE(j["parts"][0]["host_ms_per_step"].get<double>(), 20.0);
  EXPECT_NE(op_profile_table(p).find("host ms"), std::string::npos);
}

// An op entry point opens its scope on the Ctx's profiler (SY_DISPATCH).
TEST(OpProfiler, OpEntryPointsRecordThroughTheirCtx) {
  Ctx ctx = host_ctx();
  OpProfiler p(host_clock());
  ctx.profiler = &p;
  Tensor a = Tensor::zeros({4}, DType::f32, ctx), b = Tensor::zeros({4}, DType::f32, ctx);
  p.begin_step();
  ops::add_into(ctx, a, b);
  p.end_step();
  ASSERT_EQ(p.rows().size(), 1u);
  EXPECT_EQ(p.rows()[0].op, "add_into");
  EXPECT_EQ(p.rows()[0].calls, 1);
  EXPECT_GE(p.rows()[0].ms, 0.0);
}

}  // namespace
}  // namespace sy
