#include "core/error.h"

namespace sy::detail {

void throw_check(const char* file, int line, const char* expr, const std::string& msg) {
  std::ostringstream os;
  os << file << ":" << line << ": check failed: " << expr;
  if (!msg.empty()) os << ": " << msg;
  throw Error(os.str());
}

}  // namespace sy::detail
