#include <gtest/gtest.h>

#include "core/device_runtime.h"
#include "core/tensor.h"

namespace sy {
namespace {

Tensor zeros(Shape s, DType dtype = DType::f32) { return Tensor::zeros(std::move(s), dtype, host_ctx()); }

TEST(Tensor, ZeroFilledWithShape) {
  Tensor t = zeros({3, 4});
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(t.nbytes(), 48u);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(t.f32()[i], 0.f);
}

TEST(Tensor, ReshapeSharesStorageCloneDoesNot) {
  Tensor t = zeros({2, 3});
  Tensor v = t.reshape({6});
  Tensor c = t.clone();
  t.f32()[4] = 7;
  EXPECT_EQ(v.f32()[4], 7);
  EXPECT_EQ(c.f32()[4], 0);
  EXPECT_THROW(t.reshape({4}), ShapeError);
}

TEST(Tensor, Bf16RoundTripRoundsToNearestEven) {
  Tensor t = zeros({4});
  t.f32()[0] = 1.0f;
  t.f32()[1] = 1.00390625f;   // exactly halfway between bf16 1.0 and 1.0078125: rounds to even (1.0)
  t.f32()[2] = 1.01171875f;   // halfway between 1.0078125 and 1.015625: rounds to even (1.015625)
  t.f32()[3] = -3.14159f;
  Tensor b = t.to(DType::bf16);
  EXPECT_EQ(b.dtype(), DType::bf16);
  EXPECT_EQ(b.nbytes(), 8u);
  Tensor back = b.to(DType::f32);
  EXPECT_EQ(back.f32()[0], 1.0f);
  EXPECT_EQ(back.f32()[1], 1.0f);
  EXPECT_EQ(back.f32()[2], 1.015625f);
  EXPECT_NEAR(back.f32()[3], -3.14159f, 3.14159f * 0x1p-8);
}

TEST(Tensor, WrongDtypeAccessThrows) {
  Tensor b = zeros({2}, DType::bf16);
  EXPECT_THROW(b.f32(), ShapeError);
  Tensor f = zeros({2});
  EXPECT_THROW(f.data<bf16_t>(), ShapeError);
}

TEST(Tensor, CheckShapeShowsBothShapes) {
  Tensor t = zeros({2, 3});
  try {
    check_shape(t, {3, 2}, "weights");
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_STREQ(e.what(), "weights: expected [3, 2], got [2, 3]");
  }
}

TEST(Tensor, CudaCopiesRoundTrip) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU visible (or built without CUDA): device copies not tested";
  auto rt = DeviceRuntime::create();  // outlives the tensors it allocates
  Ctx& dev = rt->ctx();
  Tensor t = zeros({5});
  for (int i = 0; i < 5; ++i) t.f32()[i] = static_cast<float>(i) * 1.5f;
  Tensor d = t.to(dev);
  EXPECT_EQ(d.device(), Device::cuda());
  EXPECT_THROW(d.f32(), ShapeError);
  Tensor h = d.to(host_ctx());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(h.f32()[i], t.f32()[i]);
}

}  // namespace
}  // namespace sy
