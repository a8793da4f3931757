// Metrics are never lost silently: a failed write or close names the file and
// the system's reason; a metrics path that is an input of the run, or an
// existing non-empty file without --overwrite, is refused before training.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <filesystem>
#include <fstream>
#include <functional>
#include <unistd.h>

#include "core/error.h"
#include "runtime/metrics.h"
#include "runtime/output_file.h"
#include "runtime/step_metrics.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "error must be one line: " << m;
    return m;
  }
  ADD_FAILURE() << "expected an error";
  return "";
}

struct TempDir {
  fs::path dir = fs::temp_directory_path() / ("sy_metrics_test_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(dir); }
  ~TempDir() { fs::remove_all(dir); }
  std::string file(const std::string& name, const std::string& content) const {
    std::ofstream(dir / name) << content;
    return (dir / name).string();
  }
};

TEST(Metrics, FullDeviceNamesFileAndReason) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full here";
  MetricsWriter w("/dev/full");
  const std::string m = error_of([&] { w.write({{"step", 1}}); });
  EXPECT_NE(m.find("metrics file /dev/full: write failed: "), std::string::npos) << m;
  EXPECT_NE(m.find(std::strerror(ENOSPC)), std::string::npos) << m;
}

TEST(Metrics, WritesWholeLinesAndCloses) {
  TempDir t;
  const std::string p = (t.dir / "m.jsonl").string();
  MetricsWriter w(p);
  w.write({{"step", 1}});
  w.write({{"step", 2}});
  w.close();
  std::ifstream in(p);
  std::string a, b, c;
  std::getline(in, a), std::getline(in, b);
  EXPECT_EQ(a, "{\"step\":1}");
  EXPECT_EQ(b, "{\"step\":2}");
  EXPECT_FALSE(std::getline(in, c));
}

// A resumed run appends to a file whose last line a stopped run cut short
// (a full disk, a kill): the cut line goes, so the next record starts a line
// of its own (glued on, neither read as JSON); whole files are appended to
// as they are. (Over 4 KiB, so the search for the newline reads back more
// than once.)
TEST(Metrics, AppendingDropsALastLineCutShort) {
  TempDir t;
  const std::string whole = "{\"step\":1,\"pad\":\"" + std::string(5000, 'x') + "\"}\n{\"step\":2}\n";
  for (const std::string& tail : {std::string(), std::string("{\"step\":3,\"lo"), std::string(6000, 'y')}) {
    const std::string p = (t.dir / "m.jsonl").string();
    std::ofstream(p, std::ios::trunc) << whole << tail;
    MetricsWriter w(p, true);
    w.write({{"step", 3}});
    w.close();
    std::ifstream in(p);
    const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(got, whole + "{\"step\":3}\n") << "tail " << tail.substr(0, 20);
  }
  // Nothing but a cut line: nothing kept.
  const std::string p = (t.dir / "cut.jsonl").string();
  std::ofstream(p) << "{\"step\":1,\"lo";
  MetricsWriter w(p, true);
  w.write({{"step", 1}});
  w.close();
  std::ifstream in(p);
  const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got, "{\"step\":1}\n");
}

TEST(Metrics, UnopenableNamesReason) {
  TempDir t;
  const std::string m = error_of([&] { MetricsWriter w(t.dir.string()); });
  EXPECT_NE(m.find(std::strerror(EISDIR)), std::string::npos) << m;
}

TEST(Metrics, RefusesAnInputOfTheRunByIdentity) {
  TempDir t;
  const std::string cfg = t.file("run.pbtxt", "model {}\n"), data = t.file("text.txt", "hello\n");
  // Another spelling of the same file, and a hard link to it.
  const std::string other = (t.dir / "." / "run.pbtxt").string();
  fs::create_hard_link(data, t.dir / "link.txt");
  std::string m = error_of([&] { check_output_path("--metrics", other, {{"the config file", cfg}, {"data.path", data}}, true); });
  EXPECT_NE(m.find("is the config file " + cfg + ", an input of this run"), std::string::npos) << m;
  m = error_of([&] {
    check_output_path("--metrics", (t.dir / "link.txt").string(), {{"the config file", cfg}, {"data.path", data}}, true);
  });
  EXPECT_NE(m.find("is data.path " + data), std::string::npos) << m;
  EXPECT_NO_THROW(check_output_path("--metrics", (t.dir / "new.jsonl").string(), {{"the config file", cfg}, {"data.path", ""}}, false));
}

TEST(Metrics, RefusesNonEmptyFileUnlessOverwrite) {
  TempDir t;
  const std::string old = t.file("old.jsonl", "{\"step\":1}\n"), empty = t.file("empty.jsonl", "");
  const std::string m = error_of([&] { check_output_path("--metrics", old, {}, false); });
  EXPECT_NE(m.find("--metrics " + old + ": exists and is not empty (11 bytes); pass --overwrite"), std::string::npos) << m;
  EXPECT_NO_THROW(check_output_path("--metrics", old, {}, true));
  EXPECT_NO_THROW(check_output_path("--metrics", empty, {}, false));
  // A directory that does not exist: refused up front, one line naming it.
  const std::string nodir = (t.dir / "no_such_dir" / "m.jsonl").string();
  const std::string md = error_of([&] { check_output_path("--metrics", nodir, {}, false); });
  EXPECT_EQ(md, "--metrics " + nodir + ": directory " + (t.dir / "no_such_dir").string() + " does not exist") << md;
  // A file where a directory should be, at the parent or further up: named as a file.
  for (const std::string& under : {old + "/m.jsonl", old + "/sub/m.jsonl"}) {
    const std::string mf = error_of([&] { check_output_path("--metrics", under, {}, false); });
    EXPECT_EQ(mf, "--metrics " + under + ": " + old + " is a file, not a directory") << mf;
  }
}

TEST(Metrics, ProgressLineAfterADelayWithRateAndEta) {
  std::ostringstream out;
  ProgressLine now(&out, "evaluation", 4, 0, 0);
  for (int i = 1; i <= 4; ++i) now.done(i);
  const std::string s = out.str();
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 4) << s;
  EXPECT_NE(s.find("evaluation 4/4 batches | "), std::string::npos) << s;
  EXPECT_NE(s.find(" batches/s | ETA "), std::string::npos) << s;
  std::ostringstream none;
  ProgressLine later(&none, "evaluation", 4, 3600, 10);
  for (int i = 1; i <= 4; ++i) later.done(i);
  EXPECT_EQ(none.str(), "");
  ProgressLine(nullptr, "evaluation", 4, 0, 0).done(1);  // no stream: silent
  // Another unit (scaling_sweep's runs).
  std::ostringstream runs;
  ProgressLine sweep(&runs, "sweep", 3, 0, 0, "runs");
  sweep.done(3);
  EXPECT_NE(runs.str().find("sweep 3/3 runs | "), std::string::npos) << runs.str();
  EXPECT_NE(runs.str().find(" runs/s | ETA 0:00"), std::string::npos) << runs.str();
}

// MFU and device memory appear only with a device (peak and high water set):
// 494.5 TFLOP/s on a 989 TFLOP/s part is 50%.
TEST(Metrics, MfuAndDeviceMemoryOnlyOnADevice) {
  StepLog s;
  s.step = 1, s.steps = 2, s.flops_per_s = 494.5e12;
  const RoutingSnapshot r;
  EXPECT_FALSE(metrics_line(s, r).contains("mfu"));
  EXPECT_EQ(progress_line(s, r).find("MFU"), std::string::npos);
  s.peak_tflops = 989;
  s.device_bytes_high_water = size_t{3} << 29;  // 1.5 GiB
  s.device_bytes_reserved = size_t{1} << 31;    // 2 GiB from the driver
  const nlohmann::json line = metrics_line(s, r);
  EXPECT_DOUBLE_EQ(line["mfu"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(line["device_mem_gib"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(line["device_reserved_gib"].get<double>(), 2.0);
  EXPECT_FALSE(line.contains("host_staging_gib"));  // one rank to a GPU: nothing staged
  EXPECT_FALSE(line.contains("tensor_mem_gib"));    // the CPU's
  StepLog cpu;
  cpu.host_tensor_bytes_high_water = size_t{1} << 29;
  EXPECT_DOUBLE_EQ(metrics_line(cpu, r)["tensor_mem_gib"].get<double>(), 0.5);
  EXPECT_FALSE(metrics_line(cpu, r).contains("device_mem_gib"));
  s.host_staging_bytes = size_t{1} << 28;
  EXPECT_DOUBLE_EQ(metrics_line(s, r)["host_staging_gib"].get<double>(), 0.25);
  const std::string p = progress_line(s, r);
  EXPECT_NE(p.find(" | MFU 50.0% | mem 1.5 GiB (pool 2.0)"), std::string::npos) << p;
}

}  // namespace
}  // namespace sy
