// Every way to call the API wrongly: the exception type, its message, and that nothing was
// written. Each case mutates one valid call.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "sdpa/sdpa.h"
#include "testing/bad_call.h"
#include "testing/expect.h"

namespace {

using sdpa::DType;
using sdpa::MutableTensorView;
using sdpa::TensorView;

constexpr std::int64_t kBig = std::int64_t{1} << 31;
constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();

// Memory for one call. Every buffer has room to spare so that a mutated view never reaches
// outside it, even if validation wrongly let it through.
struct Memory {
  static constexpr std::size_t kSize = 4096;
  std::vector<float> query, key, value, out, lse;
  std::vector<double> f64;
  std::unique_ptr<bool[]> mask;

  Memory()
      : query(kSize, 0.25f),
        key(kSize, 0.5f),
        value(kSize, 0.75f),
        out(kSize, 777.0f),
        lse(kSize, 777.0f),
        f64(kSize, 1.0),
        mask(new bool[kSize]) {
    std::fill(mask.get(), mask.get() + kSize, true);
  }
  // Every byte of every buffer, to check that a failed call wrote nothing.
  std::vector<unsigned char> Bytes() const {
    std::vector<unsigned char> bytes;
    for (const auto* v : {&query, &key, &value, &out, &lse}) {
      sdpa_test::AppendBytes(bytes, v->data(), v->size());
    }
    sdpa_test::AppendBytes(bytes, f64.data(), f64.size());
    sdpa_test::AppendBytes(bytes, mask.get(), kSize);
    return bytes;
  }
};

// The valid call every case starts from (float32):
//   query [2, 4, 3, 64], key [2, 2, 5, 64], value [2, 2, 5, 16], bool mask [2, 1, 3, 5],
//   out [2, 4, 3, 16], lse [2, 4, 3].
struct Call {
  TensorView query, key, value;
  MutableTensorView out, lse;
  sdpa::Options options;

  explicit Call(Memory& m)
      : query(m.query.data(), {2, 4, 3, 64}),
        key(m.key.data(), {2, 2, 5, 64}),
        value(m.value.data(), {2, 2, 5, 16}),
        out(m.out.data(), {2, 4, 3, 16}),
        lse(m.lse.data(), {2, 4, 3}) {
    options.mask = TensorView(m.mask.get(), {2, 1, 3, 5});
  }
};

// kInputs also fail in Attention, AttentionWithLse and Explain (they validate the same inputs);
// kOutputs only concern the caller's out and lse.
using Scope = sdpa_test::Scope;
using Kind = sdpa_test::ErrorKind;
using BadCall = sdpa_test::BadCall<Call, Memory>;

void SetMask(Call& c, const TensorView& mask) { c.options.mask = mask; }

std::vector<BadCall> BadCalls() {
  const std::string kRanks =
      " but must have rank 2 (seq, dim), 3 (heads, seq, dim) or 4 (batch, heads, seq, dim)";
  const Kind kDType = Kind::kDType, kValue = Kind::kValue;
  const Scope kOut = Scope::kOutputs;
  return {
      // Rank.
      {"query_rank_1", [](Call& c, Memory& m) { c.query = TensorView(m.query.data(), {1536}); },
       "sdpa: query has rank 1" + kRanks},
      {"query_rank_5", [](Call& c, Memory&) { c.query.layout.rank = 5; },
       "sdpa: query has rank 5" + kRanks},
      {"key_rank_1", [](Call& c, Memory& m) { c.key = TensorView(m.key.data(), {1280}); },
       "sdpa: key has rank 1" + kRanks},
      {"value_rank_5", [](Call& c, Memory&) { c.value.layout.rank = 5; },
       "sdpa: value has rank 5" + kRanks},
      {"key_rank_differs",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {4, 5, 64});
       },
       "sdpa: key has rank 3 but query has rank 4"},
      {"value_rank_differs",
       [](Call& c, Memory& m) {
         c.value = TensorView(m.value.data(), {4, 5, 16});
       },
       "sdpa: value has rank 3 but query has rank 4"},
      // Element types.
      {"query_bool", [](Call& c, Memory&) { c.query.dtype = DType::kBool; },
       "sdpa: query.dtype is bool but must be float32, bfloat16, float16 or float64", kDType},
      {"key_not_a_float", [](Call& c, Memory&) { c.key.dtype = DType::kBool; },
       "sdpa: key.dtype is bool but must be float32, bfloat16, float16 or float64", kDType},
      {"value_float16_key_float32", [](Call& c, Memory&) { c.value.dtype = DType::kFloat16; },
       "sdpa: value.dtype is float16 but key.dtype is float32; key and value must share a dtype",
       kDType},
      {"key_bfloat16_query_float64",
       [](Call& c, Memory& m) {
         c.query = TensorView(m.f64.data(), {2, 4, 3, 64});
         c.key.dtype = DType::kBFloat16;
         c.value.dtype = DType::kBFloat16;
       },
       "sdpa: key.dtype is bfloat16 but query.dtype is float64; float64 needs query, key and "
       "value all float64",
       kDType},
      {"key_float64",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.f64.data(), {2, 2, 5, 64});
       },
       "sdpa: key.dtype is float64 but query.dtype is float32", kDType},
      {"value_float64",
       [](Call& c, Memory& m) {
         c.value = TensorView(m.f64.data(), {2, 2, 5, 16});
       },
       "sdpa: value.dtype is float64 but query.dtype is float32", kDType},
      {"mask_unknown_dtype",
       [](Call& c, Memory& m) {
         SetMask(c, TensorView(m.f64.data(), static_cast<DType>(77),
                               sdpa::Layout::Contiguous({2, 1, 3, 5})));
       },
       "sdpa: options.mask.dtype is unknown but must be bool or a float dtype (float32, float64, "
       "bfloat16, float16)",
       kDType},
      {"out_float64",
       [](Call& c, Memory& m) {
         c.out = MutableTensorView(m.f64.data(), {2, 4, 3, 16});
       },
       "sdpa: out.dtype is float64 but query.dtype is float32; out must be float32, bfloat16 or "
       "float16",
       kDType, kOut},
      {"lse_float64",
       [](Call& c, Memory& m) {
         c.lse = MutableTensorView(m.f64.data(), {2, 4, 3});
       },
       "sdpa: lse.dtype is float64 but query.dtype is float32; lse must be float32", kDType, kOut},
      {"lse_bfloat16", [](Call& c, Memory&) { c.lse.dtype = DType::kBFloat16; },
       "sdpa: lse.dtype is bfloat16 but query.dtype is float32; lse must be float32", kDType, kOut},
      // Sizes that must agree.
      {"key_head_dim",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {2, 2, 5, 32});
       },
       "sdpa: key.shape[3] (head_dim) is 32 but query.shape[3] is 64"},
      {"key_batch",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {1, 2, 5, 64});
       },
       "sdpa: key.shape[0] (batch) is 1 but query.shape[0] is 2"},
      {"value_batch",
       [](Call& c, Memory& m) {
         c.value = TensorView(m.value.data(), {1, 2, 5, 16});
       },
       "sdpa: value.shape[0] (batch) is 1 but query.shape[0] is 2"},
      {"value_kv_len",
       [](Call& c, Memory& m) {
         c.value = TensorView(m.value.data(), {2, 2, 4, 16});
       },
       "sdpa: value.shape[2] (kv_len) is 4 but key.shape[2] is 5"},
      {"value_kv_heads",
       [](Call& c, Memory& m) {
         c.value = TensorView(m.value.data(), {2, 1, 5, 16});
       },
       "sdpa: value.shape[1] (kv_heads) is 1 but key.shape[1] is 2"},
      {"heads_not_multiple_of_kv_heads",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {2, 3, 5, 64});
         c.value = TensorView(m.value.data(), {2, 3, 5, 16});
       },
       "sdpa: query.shape[1] (heads) is 4, which is not a multiple of key.shape[1] (kv_heads) 3"},
      {"kv_heads_zero",
       [](Call& c, Memory& m) {
         c.key = TensorView(m.key.data(), {2, 0, 5, 64});
         c.value = TensorView(m.value.data(), {2, 0, 5, 16});
       },
       "sdpa: query.shape[1] (heads) is 4, which is not a multiple of key.shape[1] (kv_heads) 0"},
      // Mask shape.
      {"mask_kv_len",
       [](Call& c, Memory& m) {
         SetMask(c, TensorView(m.mask.get(), {2, 1, 3, 4}));
       },
       "sdpa: options.mask.shape[3] is 4 but must be 1 or 5 (kv_len) to broadcast to "
       "[2, 4, 3, 5]"},
      {"mask_kv_heads",
       [](Call& c, Memory& m) {
         SetMask(c, TensorView(m.mask.get(), {2, 2, 3, 5}));
       },
       "sdpa: options.mask.shape[1] is 2 but must be 1 or 4 (heads)"},
      {"mask_batch",
       [](Call& c, Memory& m) {
         SetMask(c, TensorView(m.mask.get(), {3, 1, 1, 5}));
       },
       "sdpa: options.mask.shape[0] is 3 but must be 1 or 2 (batch)"},
      {"mask_rank_2_rows",
       [](Call& c, Memory& m) {
         SetMask(c, TensorView(m.mask.get(), {2, 5}));
       },
       "sdpa: options.mask.shape[0] is 2 but must be 1 or 3 (q_len)"},
      {"mask_rank_0",
       [](Call& c, Memory& m) {
         SetMask(c, TensorView(m.mask.get(), DType::kBool, sdpa::Layout{}));
       },
       "sdpa: options.mask has rank 0 but must have rank 1 to 4"},
      {"mask_rank_5", [](Call& c, Memory&) { c.options.mask->layout.rank = 5; },
       "sdpa: options.mask has rank 5 but must have rank 1 to 4"},
      // Scale and enums.
      {"scale_nan",
       [](Call& c, Memory&) { c.options.scale = std::numeric_limits<double>::quiet_NaN(); },
       "sdpa: options.scale is nan but must be finite"},
      {"scale_inf",
       [](Call& c, Memory&) { c.options.scale = std::numeric_limits<double>::infinity(); },
       "sdpa: options.scale is inf but must be finite"},
      {"scale_minus_inf",
       [](Call& c, Memory&) { c.options.scale = -std::numeric_limits<double>::infinity(); },
       "sdpa: options.scale is -inf but must be finite"},
      {"causal_out_of_range", [](Call& c, Memory&) { c.options.causal = sdpa::Causal(7); },
       "sdpa: options.causal is 7 but must be kNone, kTopLeft or kBottomRight"},
      {"backend_out_of_range", [](Call& c, Memory&) { c.options.backend = sdpa::Backend(-1); },
       "sdpa: options.backend is -1 but must be kAuto, kReference or kCpu"},
      // Null data.
      {"query_null", [](Call& c, Memory&) { c.query.data = nullptr; },
       "sdpa: query.data is null but query has 1536 elements"},
      {"key_null", [](Call& c, Memory&) { c.key.data = nullptr; },
       "sdpa: key.data is null but key has 1280 elements"},
      {"value_null", [](Call& c, Memory&) { c.value.data = nullptr; },
       "sdpa: value.data is null but value has 320 elements"},
      {"mask_null", [](Call& c, Memory&) { c.options.mask->data = nullptr; },
       "sdpa: options.mask.data is null but options.mask has 30 elements"},
      {"out_null", [](Call& c, Memory&) { c.out.data = nullptr; },
       "sdpa: out.data is null but out has 384 elements", kValue, kOut},
      {"lse_null", [](Call& c, Memory&) { c.lse.data = nullptr; },
       "sdpa: lse.data is null but lse has 24 elements", kValue, kOut},
      // Negative sizes.
      {"query_negative_size",
       [](Call& c, Memory& m) {
         c.query = TensorView(m.query.data(), {2, 4, -1, 64});
       },
       "sdpa: query.shape[2] is -1 but must be >= 0"},
      {"key_negative_size", [](Call& c, Memory&) { c.key.layout.shape[0] = -2; },
       "sdpa: key.shape[0] is -2 but must be >= 0"},
      {"mask_negative_size",
       [](Call& c, Memory& m) {
         SetMask(c, TensorView(m.mask.get(), {-1, 5}));
       },
       "sdpa: options.mask.shape[0] is -1 but must be >= 0"},
      {"out_negative_size", [](Call& c, Memory&) { c.out.layout.shape[2] = -3; },
       "sdpa: out.shape[2] is -3 but must be >= 0", kValue, kOut},
      // Output shapes.
      {"out_shape",
       [](Call& c, Memory& m) {
         c.out = MutableTensorView(m.out.data(), {2, 4, 3, 15});
       },
       "sdpa: out.shape is [2, 4, 3, 15] but must be [2, 4, 3, 16]", kValue, kOut},
      {"out_rank",
       [](Call& c, Memory& m) {
         c.out = MutableTensorView(m.out.data(), {8, 3, 16});
       },
       "sdpa: out has rank 3 but must have rank 4", kValue, kOut},
      {"lse_shape",
       [](Call& c, Memory& m) {
         c.lse = MutableTensorView(m.lse.data(), {2, 4, 4});
       },
       "sdpa: lse.shape is [2, 4, 4] but must be [2, 4, 3]", kValue, kOut},
      {"lse_rank",
       [](Call& c, Memory& m) {
         c.lse = MutableTensorView(m.lse.data(), {2, 4, 3, 1});
       },
       "sdpa: lse has rank 4 but must have rank 3", kValue, kOut},
      // Outputs overlapping inputs, each other or themselves.
      {"out_overlaps_query", [](Call& c, Memory& m) { c.out.data = m.query.data(); },
       "sdpa: out overlaps query in memory; outputs must not alias inputs", kValue, kOut},
      {"out_overlaps_last_query_element", [](Call& c, Memory& m) { c.out.data = &m.query[1535]; },
       "sdpa: out overlaps query in memory", kValue, kOut},
      {"out_overlaps_first_query_element",
       [](Call& c, Memory& m) {
         c.query.data = &m.query[1000];
         c.out.data = &m.query[1000 - 383];  // out's last element is query's first
       },
       "sdpa: out overlaps query in memory", kValue, kOut},
      {"out_overlaps_key", [](Call& c, Memory& m) { c.out.data = &m.key[100]; },
       "sdpa: out overlaps key in memory", kValue, kOut},
      {"out_overlaps_value", [](Call& c, Memory& m) { c.out.data = m.value.data(); },
       "sdpa: out overlaps value in memory", kValue, kOut},
      {"out_overlaps_mask", [](Call& c, Memory& m) { c.out.data = m.mask.get(); },
       "sdpa: out overlaps options.mask in memory", kValue, kOut},
      {"lse_overlaps_query", [](Call& c, Memory& m) { c.lse.data = &m.query[17]; },
       "sdpa: lse overlaps query in memory; outputs must not alias inputs", kValue, kOut},
      {"lse_overlaps_value", [](Call& c, Memory& m) { c.lse.data = &m.value[300]; },
       "sdpa: lse overlaps value in memory", kValue, kOut},
      {"lse_overlaps_out", [](Call& c, Memory& m) { c.lse.data = &m.out[100]; },
       "sdpa: lse overlaps out in memory", kValue, kOut},
      {"out_zero_stride", [](Call& c, Memory&) { c.out.layout.strides[1] = 0; },
       "sdpa: out has overlapping elements: shape [2, 4, 3, 16] with strides [192, 0, 16, 1] maps "
       "two indices to one address",
       kValue, kOut},
      {"out_interleaved_rows", [](Call& c, Memory&) { c.out.layout.strides[2] = 8; },
       "sdpa: out has overlapping elements", kValue, kOut},
      {"lse_zero_stride", [](Call& c, Memory&) { c.lse.layout.strides[2] = 0; },
       "sdpa: lse has overlapping elements", kValue, kOut},
      // Sizes or strides whose element count or byte span overflows int64 (non-null data;
      // validation must reject them before reading anything).
      {"query_count_overflows",
       [](Call& c, Memory& m) {
         c.query = TensorView(m.query.data(), {kBig, kBig, kBig, 64});
       },
       "sdpa: query with shape [2147483648, 2147483648, 2147483648, 64] is too large: its element "
       "count or byte span overflows int64"},
      {"query_bytes_overflow",
       [](Call& c, Memory& m) {
         c.query = TensorView(m.query.data(), {1, 1, std::int64_t{1} << 61, 1});
       },
       "sdpa: query with shape [1, 1, 2305843009213693952, 1] is too large"},
      {"key_stride_overflows", [](Call& c, Memory&) { c.key.layout.strides[0] = kMax / 2; },
       "sdpa: key with shape [2, 2, 5, 64] is too large"},
      {"value_negative_stride_overflows",
       [](Call& c, Memory&) { c.value.layout.strides[3] = -(std::int64_t{1} << 62); },
       "sdpa: value with shape [2, 2, 5, 16] is too large"},
      {"mask_stride_overflows", [](Call& c, Memory&) { c.options.mask->layout.strides[0] = kMax; },
       "sdpa: options.mask with shape [2, 1, 3, 5] is too large"},
      {"out_stride_overflows", [](Call& c, Memory&) { c.out.layout.strides[0] = kMax / 4; },
       "sdpa: out with shape [2, 4, 3, 16] is too large", kValue, kOut},
      {"query_stride_min", [](Call& c, Memory&) { c.query.layout.strides[0] = kMin; },
       "sdpa: query.strides[0] is -9223372036854775808, which is out of range"},
  };
}

class BadCallTest : public ::testing::TestWithParam<BadCall> {};

TEST_P(BadCallTest, ForwardThrowsAndWritesNothing) {
  const BadCall& bad = GetParam();
  Memory m;
  Call c(m);
  bad.mutate(c, m);
  const std::vector<unsigned char> before = m.Bytes();
  EXPECT_TRUE(sdpa_test::ThrowsExpected(
      bad, [&] { sdpa::Forward(c.query, c.key, c.value, c.out, c.lse, c.options); }));
  EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
  if (bad.name.rfind("lse_", 0) != 0) {  // without lse, unless lse is the problem
    EXPECT_TRUE(sdpa_test::ThrowsExpected(
        bad, [&] { sdpa::Forward(c.query, c.key, c.value, c.out, c.options); }));
    EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
  }
}

// Bad inputs (not outputs) fail the same way in every entry point that takes them.
class BadInputTest : public ::testing::TestWithParam<BadCall> {};

TEST_P(BadInputTest, OwnedOverloadsAndExplainThrowTheSame) {
  const BadCall& bad = GetParam();
  Memory m;
  Call c(m);
  bad.mutate(c, m);
  EXPECT_TRUE(
      sdpa_test::ThrowsExpected(bad, [&] { sdpa::Attention(c.query, c.key, c.value, c.options); }));
  EXPECT_TRUE(sdpa_test::ThrowsExpected(
      bad, [&] { sdpa::AttentionWithLse(c.query, c.key, c.value, c.options); }));
  EXPECT_TRUE(
      sdpa_test::ThrowsExpected(bad, [&] { sdpa::Explain(c.query, c.key, c.value, c.options); }));
}

std::vector<BadCall> BadInputs() {
  std::vector<BadCall> inputs;
  for (const BadCall& bad : BadCalls()) {
    if (bad.scope == Scope::kInputs) inputs.push_back(bad);
  }
  return inputs;
}

INSTANTIATE_TEST_SUITE_P(Validation, BadCallTest, ::testing::ValuesIn(BadCalls()),
                         sdpa_test::BadCallName());
INSTANTIATE_TEST_SUITE_P(Validation, BadInputTest, ::testing::ValuesIn(BadInputs()),
                         sdpa_test::BadCallName());

// ---- Single cases -----------------------------------------------------------------------------

TEST(Validation, BaseCallIsValid) {
  Memory m;
  Call c(m);
  EXPECT_NO_THROW(sdpa::Forward(c.query, c.key, c.value, c.out, c.lse, c.options));
  EXPECT_EQ(m.out[0], 0.75f);  // every value is 0.75
}

TEST(Validation, ErrorTypesDeriveFromInvalidArgument) {
  static_assert(std::is_base_of_v<std::invalid_argument, sdpa::Error>);
  static_assert(std::is_base_of_v<sdpa::Error, sdpa::DTypeError>);
}

TEST(Validation, HeadDimMessageIsExact) {
  Memory m;
  Call c(m);
  c.key = TensorView(m.key.data(), {2, 2, 5, 32});
  try {
    sdpa::Forward(c.query, c.key, c.value, c.out, c.options);
    FAIL() << "did not throw";
  } catch (const sdpa::Error& e) {
    EXPECT_STREQ(e.what(), "sdpa: key.shape[3] (head_dim) is 32 but query.shape[3] is 64");
  }
}

// Messages index dimensions as the caller passed them, not as the normalised rank-4 problem.
TEST(Validation, MessagesUseTheCallersRank) {
  std::vector<double> memory(1024, 0.5);
  double* d = memory.data();
  double out[64];
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Attention(TensorView(d, {3, 64}), TensorView(d, {5, 32}), TensorView(d, {5, 8}));
      },
      "sdpa: key.shape[1] (head_dim) is 32 but query.shape[1] is 64"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Attention(TensorView(d, {4, 3, 8}), TensorView(d, {3, 5, 8}),
                        TensorView(d, {3, 5, 8}));
      },
      "sdpa: query.shape[0] (heads) is 4, which is not a multiple of key.shape[0] (kv_heads) 3"));
  sdpa::Options options;
  const std::unique_ptr<bool[]> mask(new bool[4]());
  options.mask = TensorView(mask.get(), {4});
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Attention(TensorView(d, {3, 8}), TensorView(d, {5, 8}), TensorView(d, {5, 8}),
                        options);
      },
      "sdpa: options.mask.shape[0] is 4 but must be 1 or 5 (kv_len) to broadcast to "
      "[1, 1, 3, 5]"));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Forward(TensorView(d, {3, 8}), TensorView(d, {5, 8}), TensorView(d, {5, 8}),
                      MutableTensorView(out, {3, 8}), MutableTensorView(out + 24, {4}));
      },
      "sdpa: lse.shape is [4] but must be [3]"));
}

TEST(Validation, FailedCallPrintsNothing) {
  const sdpa_test::ScopedEnv verbose("SDPA_VERBOSE", std::nullopt);
  Memory m;
  Call c(m);
  c.key = TensorView(m.key.data(), {2, 2, 5, 32});
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  EXPECT_THROW(sdpa::Forward(c.query, c.key, c.value, c.out, c.options), sdpa::Error);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(::testing::internal::GetCapturedStdout(), "");
}

}  // namespace
