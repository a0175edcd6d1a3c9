// Every invalid variant option (sdpa/options.h, sdpa/custom.h): the exception, its message, and
// that nothing was written. Each case mutates one valid call; the messages are those of
// ValidateVariants and ValidateBackward.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "sdpa/custom.h"
#include "sdpa/sdpa.h"
#include "testing/bad_call.h"
#include "testing/expect.h"

namespace {

using sdpa::MutableTensorView;
using sdpa::TensorView;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();

// Memory for one call, with room for a batch of 2 (the varlen batch case) and for the backward's
// extra operands. Every byte is compared before and after a failed call.
struct Memory {
  static constexpr std::size_t kSize = 1024;
  std::vector<float> query, key, value, out, lse, grad_out, grad_query, grad_key, grad_value,
      grad_sinks;

  Memory()
      : query(kSize, 0.25f),
        key(kSize, 0.5f),
        value(kSize, 0.75f),
        out(kSize, 777.0f),
        lse(kSize, 777.0f),
        grad_out(kSize, 1.0f),
        grad_query(kSize, 777.0f),
        grad_key(kSize, 777.0f),
        grad_value(kSize, 777.0f),
        grad_sinks(kSize, 777.0f) {}
  std::vector<unsigned char> Bytes() const {
    std::vector<unsigned char> bytes;
    for (const auto* v : {&query, &key, &value, &out, &lse, &grad_out, &grad_query, &grad_key,
                          &grad_value, &grad_sinks}) {
      sdpa_test::AppendBytes(bytes, v->data(), v->size());
    }
    return bytes;
  }
};

// The valid call every case starts from (float32, one batch entry so that varlen is possible):
//   query [1, 4, 6, 8], key [1, 2, 7, 8], value [1, 2, 7, 5], out [1, 4, 6, 5], lse [1, 4, 6],
//   with a window, ALiBi, softcap, sinks, two packed sequences and dropout, all valid.
struct Call {
  TensorView query, key, value;
  MutableTensorView out, lse;
  sdpa::Options options;

  explicit Call(Memory& m)
      : query(m.query.data(), {1, 4, 6, 8}),
        key(m.key.data(), {1, 2, 7, 8}),
        value(m.value.data(), {1, 2, 7, 5}),
        out(m.out.data(), {1, 4, 6, 5}),
        lse(m.lse.data(), {1, 4, 6}) {
    options.window = sdpa::Window{2, std::nullopt};
    options.alibi_slopes = {0.5, 0.25, 0.125, 0.0625};
    options.softcap = 30.0;
    options.sinks = {0.0, -kInf, 1.5, -2.0};
    options.cu_seqlens_q = {0, 2, 6};
    options.cu_seqlens_k = {0, 4, 7};
    options.dropout_p = 0.25;
    options.seed = 5;
  }
};

// Every case throws sdpa::Error (the default kind); scope is not used: every entry point
// validates the variant options.
using BadCall = sdpa_test::BadCall<Call, Memory>;

void ScoreF32(const void*, const sdpa::ScoreBlock&, float*, float*) {}

std::vector<BadCall> BadCalls() {
  return {
      // Window.
      {"window_left_negative",
       [](Call& c, Memory&) {
         c.options.window = sdpa::Window{-1, 3};
       },
       "sdpa: options.window.left is -1 but must be >= 0"},
      {"window_right_negative",
       [](Call& c, Memory&) {
         c.options.window = sdpa::Window{std::nullopt, -3};
       },
       "sdpa: options.window.right is -3 but must be >= 0"},
      {"window_right_int64_min",
       [](Call& c, Memory&) {
         c.options.window = sdpa::Window{0, kMin};
       },
       "sdpa: options.window.right is -9223372036854775808 but must be >= 0"},
      // ALiBi: one finite slope per query head.
      {"alibi_too_few",
       [](Call& c, Memory&) {
         c.options.alibi_slopes = {0.5, 0.25, 0.125};
       },
       "sdpa: options.alibi_slopes has 3 values but must have one per query head (4)"},
      {"alibi_per_kv_head",
       [](Call& c, Memory&) {
         c.options.alibi_slopes = {0.5, 0.25};
       },
       "sdpa: options.alibi_slopes has 2 values but must have one per query head (4)"},
      {"alibi_too_many", [](Call& c, Memory&) { c.options.alibi_slopes.push_back(1.0); },
       "sdpa: options.alibi_slopes has 5 values but must have one per query head (4)"},
      {"alibi_nan", [](Call& c, Memory&) { c.options.alibi_slopes[1] = kNaN; },
       "sdpa: options.alibi_slopes[1] is nan but must be finite"},
      {"alibi_inf", [](Call& c, Memory&) { c.options.alibi_slopes[3] = kInf; },
       "sdpa: options.alibi_slopes[3] is inf but must be finite"},
      {"alibi_minus_inf", [](Call& c, Memory&) { c.options.alibi_slopes[0] = -kInf; },
       "sdpa: options.alibi_slopes[0] is -inf but must be finite"},
      // Softcap: finite and > 0.
      {"softcap_zero", [](Call& c, Memory&) { c.options.softcap = 0.0; },
       "sdpa: options.softcap is 0 but must be finite and > 0"},
      {"softcap_negative", [](Call& c, Memory&) { c.options.softcap = -1.5; },
       "sdpa: options.softcap is -1.5 but must be finite and > 0"},
      {"softcap_inf", [](Call& c, Memory&) { c.options.softcap = kInf; },
       "sdpa: options.softcap is inf but must be finite and > 0"},
      {"softcap_nan", [](Call& c, Memory&) { c.options.softcap = kNaN; },
       "sdpa: options.softcap is nan but must be finite and > 0"},
      // Sinks: one per query head, finite or -inf.
      {"sinks_too_few", [](Call& c, Memory&) { c.options.sinks = {1.0}; },
       "sdpa: options.sinks has 1 values but must have one per query head (4)"},
      {"sinks_too_many", [](Call& c, Memory&) { c.options.sinks.push_back(0.0); },
       "sdpa: options.sinks has 5 values but must have one per query head (4)"},
      {"sinks_nan", [](Call& c, Memory&) { c.options.sinks[2] = kNaN; },
       "sdpa: options.sinks[2] is nan but must be finite or -inf"},
      {"sinks_plus_inf", [](Call& c, Memory&) { c.options.sinks[0] = kInf; },
       "sdpa: options.sinks[0] is inf but must be finite or -inf"},
      // Packed sequences.
      {"cu_seqlens_q_without_k", [](Call& c, Memory&) { c.options.cu_seqlens_k.clear(); },
       "sdpa: options.cu_seqlens_q is set but options.cu_seqlens_k is not; packed sequences need "
       "both"},
      {"cu_seqlens_k_without_q", [](Call& c, Memory&) { c.options.cu_seqlens_q.clear(); },
       "sdpa: options.cu_seqlens_k is set but options.cu_seqlens_q is not; packed sequences need "
       "both"},
      {"cu_seqlens_with_batch_2",
       [](Call& c, Memory& m) {
         c.query = TensorView(m.query.data(), {2, 4, 6, 8});
         c.key = TensorView(m.key.data(), {2, 2, 7, 8});
         c.value = TensorView(m.value.data(), {2, 2, 7, 5});
         c.out = MutableTensorView(m.out.data(), {2, 4, 6, 5});
         c.lse = MutableTensorView(m.lse.data(), {2, 4, 6});
       },
       "sdpa: query.shape batch is 2 but must be 1 with options.cu_seqlens_q (sequences are packed "
       "along q_len)"},
      {"cu_seqlens_lengths_differ",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_k = {0, 7};
       },
       "sdpa: options.cu_seqlens_q has 3 values but options.cu_seqlens_k has 2; both are "
       "sequences + 1"},
      {"cu_seqlens_one_value",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_q = {6};
         c.options.cu_seqlens_k = {7};
       },
       "sdpa: options.cu_seqlens_q has 1 values but must have at least 2 (sequences + 1)"},
      {"cu_seqlens_q_starts_at_1",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_q = {1, 2, 6};
       },
       "sdpa: options.cu_seqlens_q[0] is 1 but must be 0"},
      {"cu_seqlens_k_starts_below_0",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_k = {-1, 4, 7};
       },
       "sdpa: options.cu_seqlens_k[0] is -1 but must be 0"},
      {"cu_seqlens_q_decreasing",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_q = {0, 4, 2, 6};
         c.options.cu_seqlens_k = {0, 1, 2, 7};
       },
       "sdpa: options.cu_seqlens_q[2] is 2, below options.cu_seqlens_q[1] = 4; offsets must not "
       "decrease"},
      {"cu_seqlens_k_decreasing",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_q = {0, 1, 2, 6};
         c.options.cu_seqlens_k = {0, 5, 3, 7};
       },
       "sdpa: options.cu_seqlens_k[2] is 3, below options.cu_seqlens_k[1] = 5; offsets must not "
       "decrease"},
      {"cu_seqlens_q_ends_short",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_q = {0, 2, 5};
       },
       "sdpa: options.cu_seqlens_q[2] is 5 but must be 6 (q_len)"},
      {"cu_seqlens_k_ends_long",
       [](Call& c, Memory&) {
         c.options.cu_seqlens_k = {0, 4, 8};
       },
       "sdpa: options.cu_seqlens_k[2] is 8 but must be 7 (kv_len)"},
      // Dropout: p in [0, 1] (1 drops everything, as in PyTorch).
      {"dropout_negative", [](Call& c, Memory&) { c.options.dropout_p = -0.1; },
       "sdpa: options.dropout_p is -0.1 but must be in [0, 1]"},
      {"dropout_above_one", [](Call& c, Memory&) { c.options.dropout_p = 1.5; },
       "sdpa: options.dropout_p is 1.5 but must be in [0, 1]"},
      {"dropout_nan", [](Call& c, Memory&) { c.options.dropout_p = kNaN; },
       "sdpa: options.dropout_p is nan but must be in [0, 1]"},
      {"dropout_inf", [](Call& c, Memory&) { c.options.dropout_p = kInf; },
       "sdpa: options.dropout_p is inf but must be in [0, 1]"},
      // Custom functions: a CustomScore filled by hand with one type's function missing.
      {"custom_incomplete",
       [](Call& c, Memory&) {
         static sdpa::CustomScore half;
         half.score_f32 = &ScoreF32;
         c.options.custom = &half;
       },
       "sdpa: options.custom is incomplete; build it with sdpa::MakeCustom"},
  };
}

class VariantBadCall : public ::testing::TestWithParam<BadCall> {};

TEST_P(VariantBadCall, ForwardThrowsAndWritesNothing) {
  const BadCall& bad = GetParam();
  Memory m;
  Call c(m);
  bad.mutate(c, m);
  const std::vector<unsigned char> before = m.Bytes();
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] { sdpa::Forward(c.query, c.key, c.value, c.out, c.lse, c.options); }, bad.message));
  EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] { sdpa::Forward(c.query, c.key, c.value, c.out, c.options); }, bad.message));
  EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
}

TEST_P(VariantBadCall, EveryOtherEntryPointThrowsTheSame) {
  const BadCall& bad = GetParam();
  Memory m;
  Call c(m);
  bad.mutate(c, m);
  const std::vector<unsigned char> before = m.Bytes();
  EXPECT_TRUE(sdpa_test::ThrowsError([&] { sdpa::Attention(c.query, c.key, c.value, c.options); },
                                     bad.message));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] { sdpa::AttentionWithLse(c.query, c.key, c.value, c.options); }, bad.message));
  EXPECT_TRUE(sdpa_test::ThrowsError([&] { sdpa::Explain(c.query, c.key, c.value, c.options); },
                                     bad.message));
  // The backward validates the same options first.
  const auto f32 = sdpa::DType::kFloat32;
  const TensorView out(m.out.data(), f32, c.out.layout), lse(m.lse.data(), f32, c.lse.layout),
      grad_out(m.grad_out.data(), f32, c.out.layout);
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] { sdpa::AttentionBackward(c.query, c.key, c.value, out, lse, grad_out, c.options); },
      bad.message));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Backward(c.query, c.key, c.value, out, lse, grad_out,
                       MutableTensorView(m.grad_query.data(), f32, c.query.layout),
                       MutableTensorView(m.grad_key.data(), f32, c.key.layout),
                       MutableTensorView(m.grad_value.data(), f32, c.value.layout), c.options);
      },
      bad.message));
  EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
}

INSTANTIATE_TEST_SUITE_P(Validation, VariantBadCall, ::testing::ValuesIn(BadCalls()),
                         sdpa_test::BadCallName());

// ---- Single cases -----------------------------------------------------------------------------

TEST(VariantValidation, BaseCallIsValid) {
  Memory m;
  Call c(m);
  EXPECT_NO_THROW(sdpa::Forward(c.query, c.key, c.value, c.out, c.lse, c.options));
  EXPECT_NO_THROW(sdpa::Explain(c.query, c.key, c.value, c.options));
  // Boundary values that are valid: window sides 0 and INT64_MAX, a -inf sink, a negative or
  // zero ALiBi slope, dropout just below 1, empty sequences.
  c.options.window = sdpa::Window{0, std::numeric_limits<std::int64_t>::max()};
  c.options.sinks = {-kInf, -kInf, -kInf, -kInf};
  c.options.alibi_slopes = {-1.0, 0.0, 0.0, 2.0};
  c.options.dropout_p = std::nextafter(1.0, 0.0);
  c.options.cu_seqlens_q = {0, 0, 6, 6};
  c.options.cu_seqlens_k = {0, 3, 3, 7};
  EXPECT_NO_THROW(sdpa::Forward(c.query, c.key, c.value, c.out, c.lse, c.options));
}

// Dropout's counter holds batch, head, i and j / 4 in 32-bit words. A query of 2^32 rows (all
// one row, stride 0) is rejected; Explain validates without needing an output of that size.
TEST(VariantValidation, DropoutNeedsSizesBelowTwoToThe32) {
  std::vector<float> memory(64, 0.5f);
  const std::int64_t rows = std::int64_t{1} << 32;
  const TensorView query =
      TensorView(memory.data(), sdpa::DType::kFloat32, sdpa::Layout::Strided({rows, 8}, {0, 1}));
  const TensorView key(memory.data(), {3, 8});
  sdpa::Options options;
  options.dropout_p = 0.5;
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] { sdpa::Explain(query, key, key, options); },
      "sdpa: dropout needs batch, heads, q_len and kv_len below 2^32 (its counter words)"));
  options.dropout_p = 0.0;
  options.backend = sdpa::Backend::kReference;
  EXPECT_NO_THROW(sdpa::Explain(query, key, key, options)) << "only dropout has this limit";
}

// The backward's own checks.
struct BackwardCall {
  TensorView query, key, value, out, lse, grad_out;
  MutableTensorView grad_query, grad_key, grad_value, grad_sinks;
  explicit BackwardCall(Memory& m)
      : query(m.query.data(), {1, 4, 6, 8}),
        key(m.key.data(), {1, 2, 7, 8}),
        value(m.value.data(), {1, 2, 7, 5}),
        out(m.out.data(), {1, 4, 6, 5}),
        lse(m.lse.data(), {1, 4, 6}),
        grad_out(m.grad_out.data(), {1, 4, 6, 5}),
        grad_query(m.grad_query.data(), {1, 4, 6, 8}),
        grad_key(m.grad_key.data(), {1, 2, 7, 8}),
        grad_value(m.grad_value.data(), {1, 2, 7, 5}),
        grad_sinks(m.grad_sinks.data(), {4}) {}
};

TEST(VariantValidation, GradSinksWithoutSinks) {
  Memory m;
  BackwardCall c(m);
  const sdpa::Options options;
  const std::vector<unsigned char> before = m.Bytes();
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Backward(c.query, c.key, c.value, c.out, c.lse, c.grad_out, c.grad_query, c.grad_key,
                       c.grad_value, c.grad_sinks, options);
      },
      "sdpa: grad_sinks is given but options.sinks is not set"));
  EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
}

// grad_sinks is an output like the gradients: its shape, dtype and memory are checked.
TEST(VariantValidation, GradSinksShapeDtypeAndOverlap) {
  Memory m;
  BackwardCall c(m);
  sdpa::Options options;
  options.sinks = {0.0, 0.5, -1.0, 0.0};
  std::vector<double> doubles(4, 0.0);
  const struct {
    MutableTensorView grad_sinks;
    const char* message;
    bool dtype_error;  // sdpa::DTypeError rather than sdpa::Error
  } cases[] = {
      {MutableTensorView(m.grad_sinks.data(), {3}), "sdpa: grad_sinks.shape is [3] but must be [4]",
       false},
      {MutableTensorView(doubles.data(), {4}),
       "sdpa: grad_sinks.dtype is float64 but query.dtype is float32", true},
      {MutableTensorView(m.grad_query.data(), {4}), "sdpa: grad_sinks overlaps grad_query", false},
  };
  for (const auto& bad : cases) {
    const std::vector<unsigned char> before = m.Bytes();
    const auto call = [&] {
      sdpa::Backward(c.query, c.key, c.value, c.out, c.lse, c.grad_out, c.grad_query, c.grad_key,
                     c.grad_value, bad.grad_sinks, options);
    };
    EXPECT_TRUE(bad.dtype_error ? sdpa_test::ThrowsDTypeError(call, bad.message)
                                : sdpa_test::ThrowsError(call, bad.message));
    EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory: " << bad.message;
  }
}

// A score_mod that takes plain numbers only has no derivative for the backward.
struct ScaleFloat {
  float operator()(float score, std::int64_t, std::int64_t, std::int64_t, std::int64_t) const {
    return 2.0f * score;
  }
  double operator()(double score, std::int64_t, std::int64_t, std::int64_t, std::int64_t) const {
    return 2.0 * score;
  }
};

TEST(VariantValidation, BackwardNeedsAGenericScoreMod) {
  const std::string message =
      "sdpa: the backward needs d score_mod / d score, but score_mod cannot be called with "
      "sdpa::Dual; write it as a generic lambda taking `auto` (sdpa/custom.h)";
  Memory m;
  BackwardCall c(m);
  const auto plain = sdpa::MakeCustom(ScaleFloat{});
  EXPECT_FALSE(plain.erased().differentiable);
  const sdpa::Options options = plain.With({});
  // The forward accepts it.
  sdpa::Tensor forward_out = sdpa::Attention(c.query, c.key, c.value, options);
  const std::vector<unsigned char> before = m.Bytes();
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] {
        sdpa::Backward(c.query, c.key, c.value, c.out, c.lse, c.grad_out, c.grad_query, c.grad_key,
                       c.grad_value, options);
      },
      message));
  EXPECT_TRUE(sdpa_test::ThrowsError(
      [&] { sdpa::AttentionBackward(c.query, c.key, c.value, c.out, c.lse, c.grad_out, options); },
      message));
  EXPECT_TRUE(m.Bytes() == before) << "a failed call wrote to memory";
  // The same function written generically is differentiable.
  const auto generic = sdpa::MakeCustom([](auto s, auto, auto, auto, auto) { return 2 * s; });
  EXPECT_TRUE(generic.erased().differentiable);
  // A mask_mod alone needs no derivative.
  const auto mask_only =
      sdpa::MakeCustom(sdpa::NoScoreMod{}, [](auto, auto, auto i, auto j) { return j <= i + 1; });
  EXPECT_FALSE(mask_only.erased().differentiable);
  EXPECT_NO_THROW(sdpa::AttentionBackward(c.query, c.key, c.value, c.out, c.lse, c.grad_out,
                                          mask_only.With({})));
}

}  // namespace
