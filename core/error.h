// Switchyard's error types and the one check-macro family.
//
// Library code never exits: it throws a typed exception. Programs catch at the
// top of each rank (examples/) and turn it into a message and an exit code
// (2 for bad input, 1 for everything else); under MPI the job is aborted so no
// other rank waits on a collective that will never complete.
//
// Check macros: SY_CHECK for invariants, and one macro per library built from
// SY_CHECK_CALL (CUDA_CHECK, CUBLAS_CHECK in core/cuda_check.h, NCCL_CHECK in
// comm/nccl_communicator.h, MPI_CHECK in comm/mpi_communicator.h). Each is a
// statement (do { } while (0)) and throws BackendError naming the caller's file
// and line, the expression and the library's own error string.
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

// Tensor shapes, dtypes or devices that do not fit an op; the message shows both.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// A failed call into CUDA, cuBLAS, NCCL or MPI, or a tensor on a backend this
// build (or this op) does not have.
class BackendError : public Error {
 public:
  using Error::Error;
};

// Bytes outside printable ASCII as \xNN, and at most `max` bytes of `s` (then
// "..."): text from a file (a name, a binary config) kept to one readable
// line of a message.
std::string printable(const std::string& s, size_t max = 200);

namespace detail {
[[noreturn]] void throw_check(const char* file, int line, const char* expr, const std::string& msg);
[[noreturn]] void throw_call(const char* library, const char* file, int line, const char* expr,
                             const std::string& reason);
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

// SY_CHECK_CALL(library, expr, success, reason_fn): the template of the
// library check macros. expr returns a status; anything but `success` throws
// BackendError "file:line: library: expr: reason_fn(status)".
#define SY_CHECK_CALL(library, expr, success, reason_fn)                          \
  do {                                                                            \
    const auto sy_status_ = (expr);                                               \
    if (sy_status_ != (success))                                                  \
      ::sy::detail::throw_call(library, __FILE__, __LINE__, #expr, reason_fn(sy_status_)); \
  } while (0)
