#include "runtime/checkpoint_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/error.h"

namespace sy {

namespace fs = std::filesystem;

std::string step_dir_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step_%08lld", static_cast<long long>(step));
  return b;
}

std::string join_path(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open to fsync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw Error(path + ": fsync failed: " + std::strerror(err));
}

namespace {

void rename_or_throw(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    throw Error("cannot rename " + from + " to " + to + ": " + std::strerror(errno));
}

std::string read_latest(const std::string& root) {
  std::ifstream in(join_path(root, "latest"));
  std::string name;
  std::getline(in, name);
  return name;
}

}  // namespace

void publish_checkpoint(const std::string& root, const std::string& tmp_name, const std::string& name) {
  const std::string tmp = join_path(root, tmp_name), final_dir = join_path(root, name);
  fsync_path(tmp);
  std::string aside;
  if (fs::exists(final_dir)) {
    // A checkpoint of the same name (an abandoned run's, which `latest` may
    // name) trades places with the new one in one step where the file
    // system can (Linux's RENAME_EXCHANGE), and is deleted from tmp after
    // `latest` has moved. Moved aside first and the new one renamed in, a
    // crash or a failed second rename between the two left `latest` naming
    // no directory, the old checkpoint hidden under a dot-name.
    if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
      aside = tmp;
    } else {
      // (EPERM: a sandbox that forbids renameat2; a real permission error
      // fails the plain renames below as clearly.)
      if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP && errno != EPERM)
        throw Error("cannot exchange " + tmp + " and " + final_dir + ": " + std::strerror(errno));
      aside = join_path(root, "." + name + ".replaced");
      fs::remove_all(aside);
      rename_or_throw(final_dir, aside);
      if (std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
        const int e = errno;
        std::rename(aside.c_str(), final_dir.c_str());  // the old one back where `latest` may look
        throw Error("cannot rename " + tmp + " to " + final_dir + ": " + std::strerror(e));
      }
    }
  } else {
    rename_or_throw(tmp, final_dir);
  }
  fsync_path(root);
  const std::string latest_tmp = join_path(root, "latest.tmp");
  {
    std::ofstream out(latest_tmp, std::ios::trunc);
    out << name << "\n";
    if (!out.flush()) throw Error(latest_tmp + ": cannot write");
  }
  fsync_path(latest_tmp);
  rename_or_throw(latest_tmp, join_path(root, "latest"));
  fsync_path(root);
  if (!aside.empty()) fs::remove_all(aside);
}

// The names of root's checkpoints: step_* directories holding a manifest.
static std::vector<std::string> step_dirs(const std::string& root) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step_", 0) == 0 && e.is_directory(ec) && fs::exists(e.path() / "manifest.pbtxt", ec)) names.push_back(n);
  }
  return names;
}

void prune_checkpoints(const std::string& root, int keep) {
  if (keep <= 0) return;
  const std::string latest = read_latest(root);
  struct Entry {
    fs::file_time_type written;
    std::string name;
  };
  std::vector<Entry> found;
  for (const std::string& n : step_dirs(root)) {
    std::error_code ec;
    const auto t = fs::last_write_time(fs::path(root) / n / "manifest.pbtxt", ec);
    if (!ec) found.push_back({t, n});
  }
  // Newest first: by write time, then by name (step) for equal times.
  std::sort(found.begin(), found.end(), [](const Entry& a, const Entry& b) {
    return a.written != b.written ? a.written > b.written : a.name > b.name;
  });
  for (size_t i = static_cast<size_t>(keep); i < found.size(); ++i)
    if (found[i].name != latest) fs::remove_all(join_path(root, found[i].name));
}

bool plain_file_name(const std::string& name) {
  return !name.empty() && name.size() <= 255 && name[0] != '.' && std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
         });
}

std::string resolve_checkpoint(const std::string& spec, const std::string& root) {
  auto via_latest = [](const std::string& dir) {
    const std::string name = read_latest(dir);
    if (name.empty())
      throw ConfigError(join_path(dir, "latest") + ": no checkpoint there (missing or empty)");
    // It names a step directory beside it: anything else is damage, said
    // escaped (not echoed raw to the terminal) and before it is followed.
    if (!plain_file_name(name))
      throw ConfigError(join_path(dir, "latest") + ": \"" + printable(name, 80) +
                        "\": not the name of a checkpoint directory beside it (damaged?)");
    return join_path(dir, name);
  };
  if (spec == "latest") return via_latest(root);
  if (fs::is_regular_file(join_path(spec, "manifest.pbtxt"))) return spec;
  if (fs::is_regular_file(join_path(spec, "latest"))) return via_latest(spec);
  throw ConfigError(spec + ": not a checkpoint (no manifest.pbtxt) nor a checkpoint directory (no latest)");
}

void check_init_source(const std::string& source, const std::string& root) {
  std::error_code e1, e2;
  const fs::path parent = fs::weakly_canonical(source, e1).parent_path(), mine = fs::weakly_canonical(root, e2);
  if (!e1 && !e2 && parent == mine)
    throw ConfigError("train.checkpoint_dir = " + root + ": the --init-from checkpoint " + source +
                      " lies there, and this run's checkpoints would replace or prune it (give the new run "
                      "another directory)");
}

int remove_stale_staging(const std::string& root) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    const auto ends = [&](const std::string& suf) {
      return n.size() > suf.size() && n.compare(n.size() - suf.size(), suf.size(), suf) == 0;
    };
    // (Not .step_*.replaced: after a crash between the fallback's two
    // renames it may be the one complete copy of the step `latest` names.)
    if ((n.rfind(".step_", 0) == 0 && ends(".tmp")) || n == "latest.tmp") stale.push_back(e.path());
  }
  for (const fs::path& p : stale) fs::remove_all(p);
  return static_cast<int>(stale.size());
}

std::string checkpoints_held(const std::string& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return "";
  const std::vector<std::string> found = step_dirs(root);
  if (found.empty()) return "";
  return std::to_string(found.size()) + (found.size() == 1 ? " checkpoint" : " checkpoints") + ", the newest " +
         *std::max_element(found.begin(), found.end());
}

void check_fresh_root(const std::string& root) {
  const std::string held = checkpoints_held(root);
  if (!held.empty())
    throw ConfigError("train.checkpoint_dir = " + root + ": holds another run's checkpoints (" + held +
                      "), which this run's would replace and prune: --resume " + root +
                      " to go on from them, --overwrite to let this run replace them, or another directory");
}

}  // namespace sy
