#include "runtime/run_tool.h"

#include <exception>
#include <iostream>
#include <string>

#include "runtime/agreed_error.h"

namespace sy {

int run_tool(const std::function<int()>& body, ToolRank where, const std::function<void(int)>& abort_job) {
  const std::string prefix = where.size > 1 ? "rank " + std::to_string(where.rank) + ": " : "";
  int code = 0;
  try {
    // A code returned is the same on every rank (a stop they agreed on): no abort.
    return body();
  } catch (const AgreedError& e) {
    if (where.rank == 0) std::cerr << "error: " << e.what() << std::endl;
    return e.exit_code();
  } catch (const ConfigError& e) {
    std::cerr << "error: " << prefix << e.what() << std::endl;
    code = 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << prefix << e.what() << std::endl;
    code = 1;
  }
  if (where.size > 1 && abort_job) abort_job(code);
  return code;
}

}  // namespace sy
