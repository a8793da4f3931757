// Metrics: one JSON object per logged step, one line each (JSONL), flushed as
// it is written so a crashed run still leaves whole lines; and the human
// progress line with rate and ETA.
//
// Every write, flush and the final close is checked: metrics that cannot be
// written stop the run with one line naming the file and the system's reason
// (a full disk, /dev/full), rather than going missing or ending mid-line.
#pragma once
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace sy {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  // Creates or truncates `path` (ConfigError when it cannot be opened); an
  // empty path writes nothing.
  explicit MetricsWriter(const std::string& path);
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

// Refuses (ConfigError, one line) a metrics path that would destroy data: the
// same file, by filesystem identity, as one of the run's `inputs` (what it is,
// its path), or an existing non-empty file unless `overwrite`.
void check_metrics_path(const std::string& path, const std::vector<std::pair<std::string, std::string>>& inputs,
                        bool overwrite);

// "1:05" / "1:02:03"
std::string format_duration(double seconds);

}  // namespace sy
