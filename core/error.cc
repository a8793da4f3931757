#include "core/error.h"

#include <cstdio>

namespace sy {

std::string printable(const std::string& s, size_t max) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace sy

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
