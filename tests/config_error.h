// The message of the ConfigError a piece of code throws, checked to be one
// line (bad input gets one clear line: file, field, value, what is allowed);
// shared by the tests of config loading and of the data files it names.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/error.h"

namespace sy::testing {

// Runs f; returns the ConfigError's message, or "" (and fails the test) when
// f throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << "error must be one line: " << m;
    return m;
  }
  ADD_FAILURE() << "expected a ConfigError";
  return "";
}

}  // namespace sy::testing
