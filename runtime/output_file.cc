#include "runtime/output_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace sy {

namespace fs = std::filesystem;

void check_output_path(const std::string& option, const std::string& path,
                       const std::vector<std::pair<std::string, std::string>>& inputs, bool overwrite) {
  if (path.empty()) return;
  std::error_code ec;
  for (const auto& [what, input] : inputs) {
    if (input.empty()) continue;
    if (fs::equivalent(path, input, ec))
      throw ConfigError(option + " " + path + ": is " + what + " " + input +
                        ", an input of this run; write to another file");
  }
  // Before the work, not when the file is opened after it (a sweep's or a
  // benchmark's minutes lost to a typo in the directory).
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    // A file where a directory of the path should be: named as such, not as
    // a directory that does not exist.
    for (fs::path p = parent; !p.empty() && p != p.root_path(); p = p.parent_path())
      if (fs::exists(p, ec) && !fs::is_directory(p, ec))
        throw ConfigError(option + " " + path + ": " + p.string() + " is a file, not a directory");
    throw ConfigError(option + " " + path + ": directory " + parent.string() + " does not exist");
  }
  const fs::file_status st = fs::status(path, ec);
  if (fs::is_directory(st)) throw ConfigError(option + " " + path + ": is a directory; name a file");
  if (!overwrite && fs::is_regular_file(st)) {
    const auto size = fs::file_size(path, ec);
    if (!ec && size > 0)
      throw ConfigError(option + " " + path + ": exists and is not empty (" + std::to_string(size) +
                        " bytes); pass --overwrite to replace it, or choose another file");
  }
}

void check_not_in_checkpoint(const std::string& option, const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (fs::exists((parent.empty() ? fs::path(".") : parent) / "manifest.pbtxt", ec))
    throw ConfigError(option + " " + path + ": inside the checkpoint " + (parent.empty() ? "." : parent.string()) +
                      "; write to another file");
}

void check_appendable_metrics(const std::string& option, const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec) || fs::file_size(path, ec) == 0 || ec) return;
  std::ifstream in(path);
  char first = 0;
  in >> first;  // (skips leading whitespace)
  if (first != '{')
    throw ConfigError(option + " " + path + ": exists and is not a metrics file (its first line is not a JSON "
                      "object); a resumed run appends to its metrics file: name that one, or another");
}

void make_output_dir(const std::string& field, const std::string& dir, std::vector<std::string>* created) {
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return;
  if (fs::exists(dir, ec)) throw ConfigError(field + " = " + dir + ": exists and is not a directory");
  if (created) {  // (the missing ones: from dir up to the first that exists)
    std::vector<std::string> missing;
    for (fs::path p = fs::path(dir).lexically_normal(); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
      missing.push_back(p.string());
      if (p == p.parent_path()) break;
    }
    created->insert(created->end(), missing.rbegin(), missing.rend());
  }
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw ConfigError(field + " = " + dir + ": cannot create the directory: " +
                      (ec ? ec.message() : std::string("not a directory after creation")));
}

void remove_empty_dirs(const std::vector<std::string>& dirs) noexcept {
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    std::error_code ec;
    if (fs::is_directory(*it, ec) && fs::is_empty(*it, ec)) fs::remove(*it, ec);
  }
}

void write_fully(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  for (size_t done = 0; done < n;) {
    const ssize_t w = ::write(fd, c + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0)
      throw Error(path + ": write failed after " + std::to_string(done) + " of " + std::to_string(n) +
                  " bytes: " + std::strerror(w < 0 ? errno : EIO));
    done += static_cast<size_t>(w);
  }
}

void write_file(const std::string& path, const std::string& bytes, Sync sync) {
  // open/write/close rather than a stream: each failing call leaves its errno.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path + ": cannot create: " + std::strerror(errno));
  try {
    write_fully(fd, bytes.data(), bytes.size(), path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (sync == Sync::fsync && ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(path + ": fsync failed: " + std::strerror(err));
  }
  if (::close(fd) != 0) throw Error(path + ": close failed: " + std::strerror(errno));
}

void write_file_replacing(const std::string& path, const std::string& bytes, const std::string& tmp) {
  try {
    write_file(tmp, bytes);
  } catch (const Error&) {
    std::remove(tmp.c_str());  // nothing half-written is left
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw Error(path + ": cannot rename " + tmp + " into place: " + std::strerror(err));
  }
}

}  // namespace sy
