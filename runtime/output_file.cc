#include "runtime/output_file.h"

#include <filesystem>

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
  const fs::file_status st = fs::status(path, ec);
  if (!overwrite && fs::is_regular_file(st)) {
    const auto size = fs::file_size(path, ec);
    if (!ec && size > 0)
      throw ConfigError(option + " " + path + ": exists and is not empty (" + std::to_string(size) +
                        " bytes); pass --overwrite to replace it, or choose another file");
  }
}

}  // namespace sy
