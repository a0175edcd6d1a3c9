// The owning Tensor, Layout helpers and the enum names.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/expect.h"

namespace {

using sdpa::DType;
using sdpa::Layout;
using sdpa::MutableTensorView;
using sdpa::Tensor;
using sdpa::TensorView;

TEST(Tensor, IsZeroInitialisedContiguousAndAligned) {
  const Tensor t(DType::kFloat32, {3, 5});
  EXPECT_EQ(t.dtype(), DType::kFloat32);
  EXPECT_EQ(t.rank(), 2);
  EXPECT_EQ(t.dim(0), 3);
  EXPECT_EQ(t.dim(1), 5);
  EXPECT_EQ(t.shape(), (std::vector<std::int64_t>{3, 5}));
  EXPECT_EQ(t.size(), 15);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data<float>()) % 64, 0u);
  for (std::int64_t n = 0; n < 15; ++n) EXPECT_EQ(t.data<float>()[n], 0.0f);
  const sdpa::TensorView v = t.view();
  EXPECT_EQ(v.data, t.data<float>());
  EXPECT_EQ(v.rank(), 2);
  EXPECT_EQ(v.stride(0), 5);
  EXPECT_EQ(v.stride(1), 1);
}

TEST(Tensor, AtReadsByMultiIndex) {
  Tensor t(DType::kFloat64, {2, 3, 4});
  double* data = t.data<double>();
  for (int n = 0; n < 24; ++n) data[n] = n;
  EXPECT_EQ(t.at<double>({1, 2, 3}), 23.0);
  EXPECT_EQ(t.at<double>({0, 1, 2}), 6.0);
  EXPECT_EQ(t.mutable_view().data, static_cast<void*>(data));
}

TEST(Tensor, CopyIsDeepAndMoveKeepsData) {
  Tensor a(DType::kFloat32, {4});
  a.data<float>()[2] = 7.0f;
  Tensor b = a;
  b.data<float>()[2] = 8.0f;
  EXPECT_EQ(a.at<float>({2}), 7.0f);
  EXPECT_EQ(b.at<float>({2}), 8.0f);
  Tensor c;
  c = b;
  EXPECT_EQ(c.at<float>({2}), 8.0f);
  const float* before = c.data<float>();
  const Tensor d = std::move(c);
  EXPECT_EQ(d.data<float>(), before);
  EXPECT_EQ(d.at<float>({2}), 8.0f);
}

TEST(Tensor, EmptyAndScalarShapes) {
  const Tensor empty(DType::kFloat32, {0, 3});
  EXPECT_EQ(empty.size(), 0);
  const Tensor scalar(DType::kFloat64, {});
  EXPECT_EQ(scalar.rank(), 0);
  EXPECT_EQ(scalar.size(), 1);
  EXPECT_EQ(scalar.at<double>({}), 0.0);
  const Tensor flags(DType::kBool, {3});
  EXPECT_FALSE(flags.at<bool>({1}));
}

TEST(Tensor, AtChecksIndex) {
  const Tensor t(DType::kFloat32, {2, 5});
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        t.at<float>({1, 5});
      },
      "sdpa: tensor index[1] is 5 but must be in [0, 5)"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        t.at<float>({-1, 0});
      },
      "sdpa: tensor index[0] is -1 but must be in [0, 2)"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] { t.at<float>({1}); }, "sdpa: tensor index has 1 coordinates but the tensor has rank 2"));
}

TEST(Tensor, TypedAccessChecksDType) {
  Tensor t(DType::kFloat32, {2});
  EXPECT_TRUE(sdpa_test::ThrowsDTypeError(
      [&] { t.data<double>(); }, "sdpa: tensor.dtype is float32 but was accessed as float64"));
  EXPECT_TRUE(sdpa_test::ThrowsDTypeError(
      [&] { t.at<bool>({0}); }, "sdpa: tensor.dtype is float32 but was accessed as bool"));
}

TEST(Tensor, ConstructorRejectsBadShapes) {
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        Tensor(DType::kFloat32, {2, -2});
      },
      "sdpa: tensor.shape[1] is -2 but must be >= 0"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        Tensor(DType::kFloat32, {1, 1, 1, 1, 1});
      },
      "sdpa: a tensor has rank 5 but at most 4 is supported"));
  const std::int64_t big = std::int64_t{1} << 40;
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        Tensor(DType::kFloat64, {big, big});
      },
      "sdpa: tensor with shape [1099511627776, 1099511627776] is too large"));
}

TEST(TensorLayout, ContiguousAndStrided) {
  const Layout c = Layout::Contiguous({2, 3, 4});
  EXPECT_EQ(c.rank, 3);
  EXPECT_EQ(c.strides[0], 12);
  EXPECT_EQ(c.strides[1], 4);
  EXPECT_EQ(c.strides[2], 1);
  EXPECT_EQ(c.NumElements(), 24);
  const Layout s = Layout::Strided({2, 3}, {-1, 7});
  EXPECT_EQ(s.shape[1], 3);
  EXPECT_EQ(s.strides[0], -1);
  EXPECT_EQ(s.strides[1], 7);
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        Layout::Strided({2, 3}, {1});
      },
      "sdpa: a tensor has 2 dimensions but 1 strides"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [] {
        Layout::Contiguous({1, 2, 3, 4, 5});
      },
      "sdpa: a tensor has rank 5 but at most 4 is supported"));
}

// A view built from (data, dtype, {shape...}) has that shape: the braces are a shape, not the
// fields of Layout (whose first one is the rank).
TEST(TensorLayout, BracedShapeWithADTypeIsContiguous) {
  std::vector<std::uint16_t> bits(1 * 8 * 16 * 4);
  const TensorView view(bits.data(), DType::kBFloat16, {1, 8, 16, 4});
  EXPECT_EQ(view.rank(), 4);
  EXPECT_EQ(view.dim(0), 1);
  EXPECT_EQ(view.dim(3), 4);
  EXPECT_EQ(view.stride(0), 8 * 16 * 4);
  EXPECT_EQ(view.stride(3), 1);
  const MutableTensorView out(bits.data(), DType::kFloat16, {8, 64});
  EXPECT_EQ(out.rank(), 2);
  EXPECT_EQ(out.stride(0), 64);
  EXPECT_EQ(Layout{}.rank, 0);
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        TensorView(bits.data(), DType::kBFloat16, {1, 2, 3, 4, 5});
      },
      "sdpa: a tensor has rank 5 but at most 4 is supported"));
}

TEST(Names, DTypesCausalModesAndBackends) {
  EXPECT_STREQ(sdpa::DTypeName(DType::kFloat32), "float32");
  EXPECT_STREQ(sdpa::DTypeName(DType::kFloat64), "float64");
  EXPECT_STREQ(sdpa::DTypeName(DType::kBool), "bool");
  EXPECT_EQ(sdpa::DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(sdpa::DTypeSize(DType::kFloat64), 8u);
  EXPECT_EQ(sdpa::DTypeSize(DType::kBool), sizeof(bool));
  EXPECT_STREQ(sdpa::CausalName(sdpa::Causal::kNone), "none");
  EXPECT_STREQ(sdpa::CausalName(sdpa::Causal::kTopLeft), "top_left");
  EXPECT_STREQ(sdpa::CausalName(sdpa::Causal::kBottomRight), "bottom_right");
  EXPECT_STREQ(sdpa::CausalName(sdpa::Causal(9)), "invalid");
  EXPECT_STREQ(sdpa::BackendName(sdpa::Backend::kAuto), "auto");
  EXPECT_STREQ(sdpa::BackendName(sdpa::Backend::kReference), "reference");
  EXPECT_STREQ(sdpa::BackendName(sdpa::Backend::kCpu), "cpu");
  EXPECT_STREQ(sdpa::BackendName(sdpa::Backend(9)), "invalid");
}

}  // namespace
