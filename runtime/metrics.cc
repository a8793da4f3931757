#include "runtime/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace sy {

namespace fs = std::filesystem;

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  if (path.empty()) return;
  file_ = std::fopen(path.c_str(), "w");
  if (!file_)
    throw ConfigError("--metrics " + path + ": cannot open for writing: " + std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_) std::fclose(file_);
}

void MetricsWriter::fail(const char* what, int err) {
  if (file_) std::fclose(file_);
  file_ = nullptr;
  throw Error("metrics file " + path_ + ": " + what + " failed: " + std::strerror(err));
}

void MetricsWriter::write(const nlohmann::json& line) {
  if (!file_) return;
  const std::string s = line.dump() + "\n";
  errno = 0;
  if (std::fwrite(s.data(), 1, s.size(), file_) != s.size()) fail("write", errno ? errno : EIO);
  if (std::fflush(file_) != 0) fail("write", errno ? errno : EIO);
}

void MetricsWriter::close() {
  if (!file_) return;
  std::FILE* f = file_;
  file_ = nullptr;
  errno = 0;
  const bool flushed = std::fflush(f) == 0;
  const int flush_err = errno;
  if (std::fclose(f) != 0 || !flushed)
    throw Error("metrics file " + path_ + ": close failed: " + std::strerror(flushed ? errno : flush_err));
}

void check_metrics_path(const std::string& path, const std::vector<std::pair<std::string, std::string>>& inputs,
                        bool overwrite) {
  if (path.empty()) return;
  std::error_code ec;
  for (const auto& [what, input] : inputs) {
    if (input.empty()) continue;
    if (fs::equivalent(path, input, ec))
      throw ConfigError("--metrics " + path + ": is " + what + " " + input +
                        ", an input of this run; write metrics to another file");
  }
  const fs::file_status st = fs::status(path, ec);
  if (!overwrite && fs::is_regular_file(st)) {
    const auto size = fs::file_size(path, ec);
    if (!ec && size > 0)
      throw ConfigError("--metrics " + path + ": exists and is not empty (" + std::to_string(size) +
                        " bytes); pass --overwrite to replace it, or choose another file");
  }
}

std::string format_duration(double seconds) {
  long s = std::lround(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

}  // namespace sy
