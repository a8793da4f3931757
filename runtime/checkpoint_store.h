// Where checkpoints live and how one is published; runtime/checkpoint.h
// writes what goes inside.
//
//   <root>/step_00000120/        one checkpoint: manifest.pbtxt and safetensors files
//   <root>/.step_00000120.tmp/   one being written (never read)
//   <root>/latest                the newest checkpoint's directory name, one text line
//
// Publishing: every file is fsynced by the rank that wrote it, then the
// temporary directory; it is renamed to its final name (a checkpoint of the
// same name, from an abandoned run, trades places with it in one rename and
// is deleted after; where the file system cannot exchange, it is moved aside
// first and put back should the rename fail),
// the root is fsynced, and `latest` is replaced the same way (latest.tmp,
// fsync, rename, fsync of the root). A crash at any point leaves `latest`
// naming a complete checkpoint, or no `latest`.
#pragma once
#include <cstdint>
#include <string>

namespace sy {

std::string step_dir_name(int64_t step);  // "step_00000120"
std::string join_path(const std::string& dir, const std::string& name);

// fsync of a file or a directory; throws Error naming it.
void fsync_path(const std::string& path);

// Renames root/tmp_name to root/name, fsyncs, then points `latest` at it.
void publish_checkpoint(const std::string& root, const std::string& tmp_name, const std::string& name);

// Deletes all but the `keep` most recently written checkpoints under root
// (never the one `latest` names); keep = 0 keeps all.
void prune_checkpoints(const std::string& root, int keep);

// Whether `name` is a plain file name inside a checkpoint directory:
// letters, digits, '.', '_', '-', not starting with '.', at most 255 bytes
// (the manifest's file names and what `latest` names are read only if so).
bool plain_file_name(const std::string& name);

// The checkpoint directory `spec` means: "latest" (root/latest), a directory
// holding manifest.pbtxt, or a checkpoint root holding `latest`. ConfigError
// naming what is missing otherwise.
std::string resolve_checkpoint(const std::string& spec, const std::string& root);

// A new run's --init-from checkpoint must not lie in the root its own
// checkpoints go to (every run may write one: a signal stops it with one,
// whatever train.checkpoint_interval is): publishing a step of the same name
// would replace it, `latest` would move, and pruning would delete it.
// ConfigError naming train.checkpoint_dir otherwise.
void check_init_source(const std::string& source, const std::string& root);

// A new run's checkpoint root must not hold another run's checkpoints (step
// directories with a manifest): publishing would replace a step of the same
// name, move `latest`, and pruning (train.keep_checkpoints) would delete the
// rest. ConfigError naming the newest and the ways on (--resume, --overwrite,
// another directory) otherwise; an absent or empty root passes.
void check_fresh_root(const std::string& root);
// What a writer killed mid-checkpoint left in root (".step_*.tmp"
// directories, "latest.tmp"): nothing reads them, and only writing the same
// step again removed them. train_switch removes them at the start of a run
// that writes checkpoints (train.checkpoint_interval > 0), before it writes
// (one writer a root). Returns how many went.
int remove_stale_staging(const std::string& root);

// The same test without throwing: "" when root holds no step directory, else
// what it holds ("3 checkpoints, the newest step_00000900").
std::string checkpoints_held(const std::string& root);

}  // namespace sy
