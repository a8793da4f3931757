// The GPU tests' fixture: one device runtime on GPU 0 for the whole test
// binary, and a skip with a message where no GPU is visible (or the build
// has no CUDA), so every GPU case states why it did not run.
#pragma once
#include <gtest/gtest.h>

#include <memory>

#include "core/device_runtime.h"

namespace sy::testing {

class CudaTest : public ::testing::Test {
 protected:
  static Ctx& gpu() {
    static std::unique_ptr<DeviceRuntime> rt = DeviceRuntime::create(0);
    return rt->ctx();
  }
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no GPU visible (or built without CUDA): the GPU path is not tested here";
  }
};

}  // namespace sy::testing
