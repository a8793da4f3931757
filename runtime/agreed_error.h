// AgreedError on its own: thrown by runtime/startup.h's agree_on and the
// checkpoint loader, mapped to an exit code by runtime/run_tool.h (which
// examples/tokenize uses without the rest of the runtime).
#pragma once
#include <string>

#include "core/error.h"

namespace sy {

// An error every rank of the job holds, with the same message: rank 0 prints
// it, every rank exits with exit_code() (2 bad input, 1 anything else).
class AgreedError : public Error {
 public:
  AgreedError(const std::string& what, int exit_code) : Error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

}  // namespace sy
