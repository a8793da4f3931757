// Output files a tool is told to write (--metrics, tokenize's shards and
// tokenizer): refused before any work when writing them would destroy data,
// and written so that a failure names the system's reason.
// Used by examples/tokenize without the rest of the runtime (sy_shards).
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace sy {

// Refuses (ConfigError, one line "<option> <path>: ...") writing `path`, the
// output that `option` names, when it is the same file, by filesystem
// identity (another spelling, a hard or symbolic link), as one of `inputs`
// ((what it is, its path); empty paths skipped), whatever `overwrite` says;
// or when it exists and is not empty, unless `overwrite`.
void check_output_path(const std::string& option, const std::string& path,
                       const std::vector<std::pair<std::string, std::string>>& inputs, bool overwrite);

// Refuses (ConfigError, one line) writing `path` inside a checkpoint (a
// directory holding manifest.pbtxt), whatever --overwrite says: its files
// are the checkpoint's, listed with their sizes and CRCs.
void check_not_in_checkpoint(const std::string& option, const std::string& path);

// Refuses (ConfigError, one line) appending to `path` - a resumed run's
// --metrics, which --overwrite does not govern - where it exists, is not
// empty and its first line is not a JSON object: not a metrics file.
void check_appendable_metrics(const std::string& option, const std::string& path);

// Makes directory `dir` (and its parents) where it is missing, before a
// run's work: a failure is a ConfigError, one line "<field> = <dir>: ..."
// with the system's reason (a path under /proc, an existing file, no
// permission), where it would otherwise surface at the first checkpoint.
// `created`, where given, receives the directories this call made, the
// outermost first (what a failed run removes again while they are empty:
// remove_empty_dirs).
void make_output_dir(const std::string& field, const std::string& dir, std::vector<std::string>* created = nullptr);

// Removes the directories in `dirs` that are empty, the innermost (last)
// first; errors ignored (a destructor's tidy-up).
void remove_empty_dirs(const std::vector<std::string>& dirs) noexcept;

// Writes n bytes from p to the open descriptor fd, through short writes and
// EINTR. A failure throws Error, one line naming the path, how far it got and
// the system's reason (strerror), e.g. "x.bin: write failed after 0 of 3
// bytes: No space left on device"; fd stays open (the caller owns it).
void write_fully(int fd, const void* p, size_t n, const std::string& path);

// Writes `bytes` to `path` (created or truncated) by write_fully; with
// Sync::fsync the data is on disk before it returns (checkpoint files).
// A failure throws Error naming the path, the step and strerror.
enum class Sync { none, fsync };
void write_file(const std::string& path, const std::string& bytes, Sync sync = Sync::none);

// Writes `bytes` to `tmp`, then renames it over `path`: a reader never sees
// half a file (a run stopped mid-write leaves the old one, or none). On a
// failure tmp is removed and Error names the path and strerror.
void write_file_replacing(const std::string& path, const std::string& bytes, const std::string& tmp);

}  // namespace sy
