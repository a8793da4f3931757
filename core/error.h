// Switchyard's error types and the one check-macro family.
//
// Library code never exits: it throws a typed exception. Programs catch at the
// top of each rank (examples/) and turn it into a message and an exit code
// (2 for bad input, 1 for everything else); under MPI the job is aborted so no
// other rank waits on a collective that will never complete.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace sy {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad user input: a config field, a command-line override, a data file.
// The message is one line: file, field, value, what is allowed.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Tensor shapes or dtypes that do not fit an op; the message shows both shapes.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A failed call into CUDA, cuBLAS, NCCL or MPI.
class BackendError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void throw_check(const char* file, int line, const char* expr, const std::string& msg);
}  // namespace detail

}  // namespace sy

// SY_CHECK(cond, stream-expression): an invariant that must hold; throws sy::Error.
#define SY_CHECK(cond, msg)                                                   \
  do {                                                                        \
    if (!(cond)) {                                                            \
      std::ostringstream sy_check_os_;                                        \
      sy_check_os_ << msg;                                                    \
      ::sy::detail::throw_check(__FILE__, __LINE__, #cond, sy_check_os_.str()); \
    }                                                                         \
  } while (0)
