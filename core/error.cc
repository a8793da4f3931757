#include "core/error.h"

namespace sy::detail {

void throw_check(const char* file, int line, const char* expr, const std::string& msg) {
  std::ostringstream os;
  os << file << ":" << line << ": check failed: " << expr;
  if (!msg.empty()) os << ": " << msg;
  throw Error(os.str());
}

void throw_call(const char* library, const char* file, int line, const char* expr,
                const std::string& reason) {
  std::ostringstream os;
  os << file << ":" << line << ": " << library << ": " << expr << ": " << reason;
  throw BackendError(os.str());
}

}  // namespace sy::detail
