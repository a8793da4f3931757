// Whole-file reads for the inputs a user names (configs, corpora, manifests,
// tokenizer models, JSON): one place that tells a failed read from the end
// of the file.
#pragma once

#include <string>

namespace sy {

// The whole of a file's bytes. ConfigError naming path, what it is for
// ("config file", "data file") and the system's reason where it cannot be
// opened or a read fails part-way. (An ifstream takes an I/O error for the
// end of the file: /proc/self/mem, a regular file by its type, read as an
// empty config.) Callers refuse non-regular files first where a device or
// FIFO could be read forever.
std::string read_whole_file(const std::string& path, const std::string& what);

}  // namespace sy
