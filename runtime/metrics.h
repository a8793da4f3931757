// Metrics: one JSON object per logged step, one line each (JSONL), flushed as
// it is written so a crashed run still leaves whole lines; and the human
// progress line with rate and ETA.
//
// Every write, flush and the final close is checked: metrics that cannot be
// written stop the run with one line naming the file and the system's reason
// (a full disk, /dev/full), rather than going missing or ending mid-line.
#pragma once
#include <cstdint>
#include <cstdio>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace sy {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  // Creates or truncates `path`, or with append continues it (a resumed run;
  // a last line cut short, by a run stopped mid-write, is dropped first);
  // ConfigError when it cannot be opened; an empty path writes nothing.
  explicit MetricsWriter(const std::string& path, bool append = false);
  ~MetricsWriter();  // closes without reporting; call close() to check it
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  // One line, flushed; throws Error naming the file and the reason on failure.
  void write(const nlohmann::json& line);
  // Flushes and closes; throws Error naming the file and the reason on failure.
  void close();

 private:
  [[noreturn]] void fail(const char* what, int err);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Progress of a long loop (a long evaluation, a sweep's runs): silent for its
// first after_s seconds, then one line every every_s seconds and at the end,
// e.g.
//   "evaluation 1200/65536 batches | 3.2 batches/s | ETA 5:40"
class ProgressLine {
 public:
  ProgressLine(std::ostream* out, std::string what, int64_t total, double after_s, double every_s,
               std::string unit = "batches");
  void done(int64_t n);  // n of total finished

 private:
  std::ostream* out_;
  std::string what_, unit_;
  int64_t total_;
  double start_, after_s_, every_s_, last_ = -1;
};

// "1:05" / "1:02:03"
std::string format_duration(double seconds);

}  // namespace sy
