// runtime/run_tool.h: what a tool throws becomes one line and an exit code.
#include "runtime/run_tool.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "runtime/agreed_error.h"

namespace {

struct Outcome {
  int code;
  std::string err;
  int aborted;  // the code abort_job was called with, -1 when it was not
};

template <class Body>
Outcome run(Body body, sy::ToolRank where = {}) {
  Outcome o{0, "", -1};
  testing::internal::CaptureStderr();
  o.code = sy::run_tool(body, where, [&](int code) { o.aborted = code; });
  o.err = testing::internal::GetCapturedStderr();
  return o;
}

TEST(RunTool, ReturnsTheBodysCode) {
  const Outcome o = run([] { return 4; });
  EXPECT_EQ(o.code, 4);
  EXPECT_EQ(o.err, "");
  EXPECT_EQ(o.aborted, -1);
}

TEST(RunTool, EachErrorTypeHasItsCode) {
  Outcome o = run([]() -> int { throw sy::ConfigError("x.pbtxt: train.steps = -1: must be >= 1"); });
  EXPECT_EQ(o.code, 2);
  EXPECT_EQ(o.err, "error: x.pbtxt: train.steps = -1: must be >= 1\n");
  o = run([]() -> int { throw std::runtime_error("disk full"); });
  EXPECT_EQ(o.code, 1);
  EXPECT_EQ(o.err, "error: disk full\n");
  o = run([]() -> int { throw sy::AgreedError("ck: refused", 2); });
  EXPECT_EQ(o.code, 2);
  EXPECT_EQ(o.err, "error: ck: refused\n");
  EXPECT_EQ(o.aborted, -1);  // one rank: nothing to abort
}

TEST(RunTool, SeveralRanks) {
  // An agreed error: every rank exits with its code, rank 0 alone prints it, no abort.
  Outcome o = run([]() -> int { throw sy::AgreedError("refused", 3); }, {1, 2});
  EXPECT_EQ(o.code, 3);
  EXPECT_EQ(o.err, "");
  EXPECT_EQ(o.aborted, -1);
  o = run([]() -> int { throw sy::AgreedError("refused", 3); }, {0, 2});
  EXPECT_EQ(o.err, "error: refused\n");
  EXPECT_EQ(o.aborted, -1);
  // One rank's own error names the rank and ends the job.
  o = run([]() -> int { throw sy::ConfigError("bad"); }, {1, 4});
  EXPECT_EQ(o.code, 2);
  EXPECT_EQ(o.err, "error: rank 1: bad\n");
  EXPECT_EQ(o.aborted, 2);
  o = run([]() -> int { throw std::runtime_error("lost"); }, {3, 4});
  EXPECT_EQ(o.code, 1);
  EXPECT_EQ(o.err, "error: rank 3: lost\n");
  EXPECT_EQ(o.aborted, 1);
}

}  // namespace
