// libFuzzer target: the config loader (runtime/config.h) on arbitrary input.
//
// An input is the text of a config file, optionally followed by a line "%%"
// and then --set overrides, one per line:
//
//   model { d_model: 64 }
//   %%
//   moe.num_experts=8
//
// The target does what load_config does for a file and a command line:
// parse the text, apply each override in order, validate. Outcomes that are
// fine: a valid Config, or a sy::ConfigError / sy::Error (a typed rejection,
// which train_switch turns into one line and exit 2). Anything else is a
// finding: a crash, a sanitizer report (ASan, UBSan), a leak, or an exception
// of another type (it leaves this function, std::terminate aborts, and
// libFuzzer saves the input).
//
// Seeds: fuzz/corpus/config_fuzz/ and configs/*.pbtxt; scripts/ci_fuzz.sh
// gives the fuzzer a dictionary of the schema's names (config_fuzz_dict).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "runtime/config.h"

namespace {

// Splits an input at its first line "%%" into the config text and the
// override lines after it (empty lines skipped).
void split_input(const std::string& in, std::string& text, std::vector<std::string>& overrides) {
  const size_t sep = in.compare(0, 3, "%%\n") == 0 ? 0 : in.find("\n%%\n");
  if (sep == std::string::npos) {
    text = in;
    return;
  }
  text = in.substr(0, sep);
  for (size_t start = sep + (sep == 0 ? 3 : 4), end; start < in.size(); start = end + 1) {
    end = in.find('\n', start);
    if (end == std::string::npos) end = in.size();
    if (end > start) overrides.push_back(in.substr(start, end - start));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text;
  std::vector<std::string> overrides;
  split_input(std::string(reinterpret_cast<const char*>(data), size), text, overrides);
  try {
    sy::Config cfg = sy::parse_config(text, "fuzz.pbtxt");
    for (const auto& o : overrides) sy::apply_override(cfg, o);
    sy::validate_config(cfg, "fuzz.pbtxt");
  } catch (const sy::Error&) {  // ConfigError and the other typed rejections
  }
  return 0;
}
