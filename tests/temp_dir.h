// A fresh directory under /tmp for one test, removed with everything in it
// when the test ends.
#pragma once
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "runtime/checkpoint_store.h"

namespace sy::testing {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/sy_test_XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& name) const { return join_path(path, name); }
};

}  // namespace sy::testing
