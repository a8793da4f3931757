// Metrics: one JSON object per logged step, one line each (JSONL), flushed as
// it is written so a crashed run still leaves whole lines; and the human
// progress line with rate and ETA.
#pragma once
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace sy {

class MetricsWriter {
 public:
  MetricsWriter() = default;
  // Empty path: write nothing. append: continue the file (a resumed run)
  // rather than start it anew.
  explicit MetricsWriter(const std::string& path, bool append = false);
  void write(const nlohmann::json& line);

 private:
  std::ofstream out_;
};

// "1:05" / "1:02:03"
std::string format_duration(double seconds);

}  // namespace sy
