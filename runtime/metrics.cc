#include "runtime/metrics.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <unistd.h>

#include "core/error.h"
#include "core/file.h"

namespace sy {

namespace {
// A run that stopped mid-write (a full disk, a kill) can leave its last line
// cut short: appending after it would glue the next record onto it (neither
// then reads as JSON). The cut line was never a record: it goes, back to the
// last newline.
void drop_partial_last_line(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return;  // (none yet: fopen "a" makes it)
  const std::string text = read_whole_file(path, "metrics file");
  const size_t nl = text.rfind('\n');
  const size_t keep = nl == std::string::npos ? 0 : nl + 1;
  if (keep < text.size() && truncate(path.c_str(), static_cast<off_t>(keep)) != 0)
    throw ConfigError("--metrics " + path + ": cannot drop its cut-short last line: " + std::strerror(errno));
}
}  // namespace

MetricsWriter::MetricsWriter(const std::string& path, bool append) : path_(path) {
  if (path.empty()) return;
  if (append) drop_partial_last_line(path);
  file_ = std::fopen(path.c_str(), append ? "a" : "w");
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

namespace {
double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}
}  // namespace

ProgressLine::ProgressLine(std::ostream* out, std::string what, int64_t total, double after_s, double every_s,
                           std::string unit)
    : out_(out),
      what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      start_(now_s()),
      after_s_(after_s),
      every_s_(every_s) {}

void ProgressLine::done(int64_t n) {
  if (!out_) return;
  const double now = now_s(), elapsed = now - start_;
  if (elapsed < after_s_) return;
  if (n < total_ && last_ >= 0 && now - last_ < every_s_) return;
  last_ = now;
  const double rate = n / std::max(1e-9, elapsed);
  char b[160];
  // (slow units, a sweep's runs: per minute where under one a second)
  const bool per_min = rate < 1;
  std::snprintf(b, sizeof b, "%s %lld/%lld %s | %.2f %s/%s | ETA %s\n", what_.c_str(), static_cast<long long>(n),
                static_cast<long long>(total_), unit_.c_str(), per_min ? rate * 60 : rate, unit_.c_str(),
                per_min ? "min" : "s", format_duration((total_ - n) / std::max(1e-9, rate)).c_str());
  *out_ << b;
  out_->flush();
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
